"""Benchmark: `ivdseg batch` against a shell loop of `ivdseg segment`, in series per minute.

N copies of a sample case (default 20 copies of case25, 67 sagittal slices) are segmented three ways, each into a
fresh folder: (a) a loop that starts `ivdseg segment` once per series (Python start, imports and model load every
time), (b) `ivdseg batch` with one worker, (c) `ivdseg batch` with two workers (each pinned to its share of the
cores). Prints the wall time of each, series per minute, and the ratios to the loop. The machine is noisy: run it
alone, and --repeats > 1 takes medians.

    python Testing/benchmarks/bench_batch.py [--copies 20] [--repeats 1] [--tta]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))


def _ivdseg(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "ivdseg", *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"ivdseg {args[0]} failed:\n{proc.stderr[-2000:]}")


def main(argv=None):
    from ivdseg.data.sample_data import sample_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=20)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--tta", action="store_true", help="keep the test-time augmentation the card enables")
    a = p.parse_args(argv)
    case = sample_data_dir() / "ivd_lumbar_t2" / "nifti" / "case25_T2w.nii.gz"
    tta = [] if a.tta else ["--no-tta"]
    with tempfile.TemporaryDirectory(prefix="ivdseg-bench-batch-") as tmp:
        tmp = Path(tmp)
        source = tmp / "in"
        source.mkdir()
        for k in range(a.copies):
            shutil.copy(case, source / f"copy{k:03d}.nii.gz")

        def loop():
            out = tmp / "loop"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for path in sorted(source.iterdir()):
                _ivdseg("segment", path, "-o", out / path.name, "--progress", "none", *tta)

        def batch(workers):
            def run():
                out = tmp / f"batch{workers}"
                shutil.rmtree(out, ignore_errors=True)
                _ivdseg("batch", source, "-o", out, "--workers", workers, "--progress", "none", *tta)
            return run

        figures = {}
        for name, fn in (("shell loop of ivdseg segment", loop), ("ivdseg batch, 1 worker", batch(1)),
                         ("ivdseg batch, 2 workers", batch(2))):
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            figures[name] = statistics.median(times)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{a.copies} copies of case25 (67 slices), {cores} cores, {'with' if a.tta else 'without'} TTA, "
          f"median of {a.repeats}:")
    base = figures["shell loop of ivdseg segment"]
    for name, seconds in figures.items():
        print(f"  {name:32s} {seconds:7.1f} s  {a.copies / seconds * 60:6.1f} series/min  "
              f"{base / seconds:4.2f}x the loop")


if __name__ == "__main__":
    main()
