"""``python -m tftrt``: the ``tftrt`` command (see tftrt/cli.py)."""

import sys

from tftrt.cli import console_main

sys.exit(console_main())
