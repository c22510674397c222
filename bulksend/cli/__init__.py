"""The ``bulksend`` command line: one module per sub-command, and what only the commands use
(printing with Rich: progress, summaries, errors)."""
