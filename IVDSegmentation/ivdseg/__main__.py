"""``python -m ivdseg``: the worker entry point used by the Slicer module."""

import sys

from ivdseg.cli import main

sys.exit(main())
