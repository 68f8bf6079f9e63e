"""``python -m ivdseg``: the worker entry point used by the Slicer module."""

import sys

from .cli import main

sys.exit(main())
