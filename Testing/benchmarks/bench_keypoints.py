"""How long one interactive correction takes: the keypoint worker of the Correct points mode (the model loaded once,
then one network run per drag, ONNX Runtime on the CPU), against the whole `ivdseg keypoints --fix` command (start,
imports, model load, one run, files written).

    .venv/bin/python Testing/benchmarks/bench_keypoints.py [--model PKG] [--image VOLUME_OR_PNG] [--repeats 20]

Prints the worker's start-up time, the median and range of a correction (one fixed point, as after a drag), the
median of the whole command, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))

from ivdseg.data.sample_data import sample_data_dir  # noqa: E402
from IVDSegmentationLib.pointcorrection import KeypointServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ivd-disc-centres-2d")
    parser.add_argument("--image", type=lambda t: Path(t).resolve(), default=sample_data_dir() / "ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    parser.add_argument("--repeats", type=int, default=20)
    a = parser.parse_args()
    from ivdseg.models.package import resolve_model

    model = resolve_model(a.model).resolve()
    started = time.perf_counter()
    server = KeypointServer(a.image, model, timeout=60)
    start_s = time.perf_counter() - started
    try:
        first = server({})  # the model's own points, then drags of the first point by a few mm
        label = server.labels[0]
        rng = np.random.default_rng(0)
        times = []
        for _ in range(a.repeats):
            fix = tuple(np.asarray(first[label]) + np.r_[0.0, rng.uniform(-4, 4, 2)])
            t0 = time.perf_counter()
            server({label: fix})
            times.append(time.perf_counter() - t0)
    finally:
        server.close()
    whole = []
    with tempfile.TemporaryDirectory() as tmp:
        ras = np.asarray(first[label])
        picture = a.image.suffix.lower() in (".png", ".jpg", ".jpeg")
        fix = f"{-ras[0]:.3f},{-ras[1]:.3f}" if picture else ",".join(f"{v:.3f}" for v in ras)  # column,row or RAS
        for n in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ivdseg", "keypoints", str(a.image), "--model", str(model), "-o",
                            str(Path(tmp) / f"p{n}.mrk.json"), "--fix", f"{label}={fix}", "--progress", "none"],
                           check=True, cwd=ROOT / "IVDSegmentation", capture_output=True)
            whole.append(time.perf_counter() - t0)
    median = statistics.median(times)
    from ivdseg.models.package import read_card

    card = read_card(model)
    print(f"model {card['name']} {card['version']}, image {a.image.name}, {a.repeats} corrections, CPU")
    print(f"keypoint worker start-up (imports, model load, image read): {start_s:.2f} s")
    print(f"one correction in the worker: median {median * 1000:.0f} ms (range {min(times) * 1000:.0f}-"
          f"{max(times) * 1000:.0f} ms)")
    print(f"the whole `ivdseg keypoints --fix` command: median {statistics.median(whole):.2f} s of 3; "
          f"ratio command / correction {statistics.median(whole) / median:.0f}")


if __name__ == "__main__":
    main()
