"""``python -m tftrt``: the ``tftrt`` command (see tftrt/cli.py)."""

import sys

from tftrt.cli import main

sys.exit(main())
