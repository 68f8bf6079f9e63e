"""The ``ivdseg`` sub-commands, one function each (``args`` -> exit code); ivdseg.cli parses and dispatches."""
