"""The campaign report: outcomes aggregated while streaming, drawn as one self-contained HTML file.

:mod:`~bulksend.reporting.aggregate` counts (bounded memory, any number of rows),
:mod:`~bulksend.reporting.charts` draws small SVG charts, :mod:`~bulksend.reporting.html` lays
the sections out, :mod:`~bulksend.reporting.files` reads an outcomes file and writes the report
and its resend file, and :mod:`~bulksend.reporting.timeline` records a run's flow control.
"""
