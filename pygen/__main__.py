"""``python -m pygen`` is the ``pygen`` command (pygen/cli.py)."""

import sys

from pygen.cli import main

sys.exit(main())
