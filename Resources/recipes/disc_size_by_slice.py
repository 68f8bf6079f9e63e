"""Where a disc model's extra or missing area lies on the ivd_lumbar_t2 volumes: on the slices that carry labels, or
on slices beyond them (EXPERIMENTS.md, "Where each source draws the disc boundary").

    python Resources/recipes/disc_size_by_slice.py [--model PACKAGE] case25 case11

Prints, per volume: Dice and predicted over labelled disc area, the same on the labelled slices only, and the
predicted pixels on slices without a label. The model runs without its test-time augmentation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "IVDSegmentation"))

from ivdseg.data.sample_data import sample_data_dir  # noqa: E402
from ivdseg.inference.backends import load_backend  # noqa: E402
from ivdseg.inference.segment import check_sagittal, segment_volume  # noqa: E402
from ivdseg.io.volumes import read_volume  # noqa: E402
from ivdseg.models.package import resolve_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="+", help="ivd_lumbar_t2 case names, e.g. case25")
    p.add_argument("--model", help="disc model package (default: the bundled one)")
    a = p.parse_args(argv)
    backend = load_backend(resolve_model(a.model), "onnx", "cpu")
    card = {k: v for k, v in backend.card.items() if k != "tta"}
    root = sample_data_dir() / "ivd_lumbar_t2" / "nifti"
    for case in a.cases:
        result = segment_volume(read_volume(root / f"{case}_T2w.nii.gz"), backend.predict, card)
        pred = check_sagittal(result.labelmap)[0] > 0
        true = check_sagittal(read_volume(root / f"{case}_ivd_labels.nii.gz"))[0] > 0
        p_area, t_area = pred.sum(axis=(1, 2)), true.sum(axis=(1, 2))
        inter = (pred & true).sum(axis=(1, 2))
        rows = np.flatnonzero(t_area)
        on = np.zeros(len(t_area), bool)
        on[rows.min():rows.max() + 1] = True
        print(f"{case}: Dice {2 * inter.sum() / (p_area.sum() + t_area.sum()):.3f}, size {p_area.sum() / t_area.sum():.3f}; "
              f"labelled slices only: Dice {2 * inter.sum() / (p_area[on].sum() + t_area.sum()):.3f}, "
              f"size {p_area[on].sum() / t_area.sum():.3f}; {p_area[~on].sum()} of {p_area.sum()} predicted pixels "
              "on slices without a label")
    return 0


if __name__ == "__main__":
    sys.exit(main())
