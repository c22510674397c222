"""``python -m bulksend.cli``: the ``bulksend`` command."""

import sys

from bulksend.cli.main import main

sys.exit(main())
