"""Training labels for the lumbosacral-disc locator, derived from the sample data (run by ivd-lumbosacral-2d.sh).

SPIDER's 2D copy keeps one disc class; its per-level labels were lost when the slices were made. Each subject's
contiguous sagittal slices are stacked, the discs split into 3D instances (ivdseg.inference.levels), and the lowest
one, the disc above the sacrum that every SPIDER scan shows, becomes "lumbosacral disc" (2); the other discs stay
"intervertebral disc" (1); vertebrae and canal become background. ivd_lumbar_t2 needs no derivation (its label 1 is
L5-S1). Writes OUT/spider/{images,labels}/ (images are links to the originals) and OUT/spec.json for ivdseg export.

    python Resources/recipes/derive_lumbosacral_labels.py OUT
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))

from ivdseg.data.sample_data import sample_data_dir  # noqa: E402
from ivdseg.inference.levels import split_instances  # noqa: E402
from ivdseg.io.geometry import Volume  # noqa: E402

SPIDER_DISC = 2
# A stack (slice, row, column) = (R -> L, S -> I, A -> P) of 1 mm pixels, 1 mm apart (the PNGs keep no spacing;
# only the order along S matters here).
STACK_TO_RAS = np.array([[0.0, 0.0, -1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def main(out: Path) -> None:
    spider = sample_data_dir() / "spider_t2_2d"
    by_subject = defaultdict(list)
    for path in (spider / "images").glob("*.png"):
        m = re.match(r"^(\d+)_t2_SPACE_slice(\d+)\.png$", path.name)
        if m:
            by_subject[m.group(1)].append((int(m.group(2)), path))
    (out / "spider" / "images").mkdir(parents=True, exist_ok=True)
    (out / "spider" / "labels").mkdir(parents=True, exist_ok=True)
    counts = []
    for subject, slices in sorted(by_subject.items(), key=lambda kv: int(kv[0])):
        slices.sort()
        labels = np.stack([cv2.imread(str(spider / "labels" / p.name), cv2.IMREAD_UNCHANGED) for _, p in slices])
        discs = labels == SPIDER_DISC
        instances, n = split_instances(discs, Volume(np.zeros(discs.shape, np.uint8), STACK_TO_RAS))
        rows = {v: np.argwhere(instances == v)[:, 1].mean() for v in range(1, n + 1)}
        lowest = max(rows, key=rows.get)  # rows run superior -> inferior
        derived = np.where(discs, 1, 0).astype(np.uint8)
        derived[instances == lowest] = 2
        for (_, path), label in zip(slices, derived):
            link = out / "spider" / "images" / path.name
            if not link.exists():
                os.symlink(path, link)
            cv2.imwrite(str(out / "spider" / "labels" / path.name), label)
        counts.append(n)
    spec = {
        "description": "The lumbosacral-disc locator's training data (derived by derive_lumbosacral_labels.py).",
        "classes": ["intervertebral disc", "lumbosacral disc"],
        "sources": [
            {"name": "spider", "kind": "slices", "root": "spider", "images": "images/*.png",
             "labels": "labels/{name}", "patient_pattern": r"^(\d+)_t2",
             "classes": {"intervertebral disc": [1], "lumbosacral disc": [2]}},
            {"name": "ivd_lumbar_t2", "kind": "volumes", "root": str(sample_data_dir() / "ivd_lumbar_t2"),
             "images": "nifti/*_T2w.nii.gz", "labels": "nifti/{patient}_ivd_labels.nii.gz",
             "patient_pattern": r"^(case\d+)_",
             "classes": {"intervertebral disc": [2, 3, 4, 5], "lumbosacral disc": [1]}},
        ],
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    print(f"{len(counts)} SPIDER subjects, {min(counts)}-{max(counts)} discs each (median {int(np.median(counts))}); "
          f"spec: {out / 'spec.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/lumbosacral_data"))
