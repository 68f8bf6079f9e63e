"""Shared test set-up: where the real sample data is, and how a missing set is reported.

A missing data set skips the test with its reason, except under CI (CI=true), where it fails:
a broken data path must never pass silently.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sample_data_dir() -> Path:
    return Path(os.environ.get("IVDSEG_SAMPLE_DATA", ROOT.parent / "shared" / "data"))


def require_data(relpath: str) -> Path:
    """Path of a sample data set; skips (or fails under CI=true) when it is missing."""
    path = sample_data_dir() / relpath
    if not path.exists():
        reason = f"sample data {path} is missing (set IVDSEG_SAMPLE_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def data_dir():
    return require_data(".")
