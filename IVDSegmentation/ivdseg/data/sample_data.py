"""Where the real sample data is: IVDSEG_SAMPLE_DATA, else ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path


def sample_data_dir() -> Path:
    env = os.environ.get("IVDSEG_SAMPLE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "data"  # <checkout>/../shared/data


def expand(path_text: str) -> str:
    """Replaces ``{sample_data}`` in a path of an export spec."""
    return path_text.replace("{sample_data}", str(sample_data_dir()))
