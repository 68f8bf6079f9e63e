"""How long Cancel takes, from the click to the worker's end, with the worker started directly and through a
launcher like PythonSlicer (a parent process that forwards no signal), and how long a training Stop takes to
leave the epoch loop and package the best model.

    .venv/bin/python Testing/benchmarks/bench_cancel.py [--repeats 7]

Prints the median and the range of each, in seconds; Cancel must stay under 1 s.
"""

from __future__ import annotations

import argparse
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))

from ivdseg.data.phantom import synthetic_spine_volume  # noqa: E402
from ivdseg.io.volumes import write_volume  # noqa: E402
from IVDSegmentationLib.worker import WorkerJob  # noqa: E402

LAUNCHER = '''#!{python}
import subprocess, sys
sys.exit(subprocess.Popen([{python!r}, *sys.argv[1:]]).wait())
'''


def _launcher(folder: Path) -> str:
    path = folder / "PythonSlicer"
    path.write_text(LAUNCHER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _until(job, event):
    while not any(e["event"] == event for e in job.events):
        if job.finished:
            raise RuntimeError(job.log[-2000:])
        job.poll()
        time.sleep(0.01)


def cancel_seconds(volume: Path, out: Path, python=None) -> float:
    job = WorkerJob(["segment", volume, "-o", out, "--device", "cpu", "--batch-size", "1", "--progress", "jsonl"],
                    python=python)
    _until(job, "progress")
    t0 = time.perf_counter()
    job.cancel()
    while not job.finished:
        time.sleep(0.005)
    return time.perf_counter() - t0


def stop_seconds(folder: Path, python=None) -> tuple[float, bool]:
    from ivdseg.data.export import ExportOptions, RawCase, export_dataset
    from IVDSegmentationLib.training import TrainingLogic

    dataset = folder / "ds"
    if not dataset.exists():
        cases = []
        for n in range(3):
            image, truth = synthetic_spine_volume(seed=n)
            cases.append(RawCase(patient=f"p{n}", source="phantom", image=image.array, label=truth.array))
        export_dataset(cases, ["intervertebral disc"], dataset, ExportOptions(sizes=(64,), val_fraction=0.34))
    job = TrainingLogic(python).startTraining(dataset, folder / "run", size=64, epochs=500, batchSize=4, name="b",
                                              extraArgs=["--depth", "3", "--base-filters", "8", "--overwrite"])
    _until(job, "epoch")
    t0 = time.perf_counter()
    TrainingLogic.stopTraining(job)
    job.wait()
    seconds = time.perf_counter() - t0
    return seconds, (folder / "run" / "model" / "model.json").is_file()


def _report(name, values):
    print(f"{name:<44} median {statistics.median(values):.3f} s  (range {min(values):.3f}-{max(values):.3f}, "
          f"n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-training", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image, _ = synthetic_spine_volume()
        volume = write_volume(image, tmp / "spine.nrrd")
        launcher = _launcher(tmp)
        direct = [cancel_seconds(volume, tmp / "a.nrrd") for _ in range(args.repeats)]
        through = [cancel_seconds(volume, tmp / "b.nrrd", launcher) for _ in range(args.repeats)]
        _report("Cancel, worker started directly", direct)
        _report("Cancel, worker behind a launcher", through)
        print(f"ratio launcher/direct (medians): {statistics.median(through) / statistics.median(direct):.2f}")
        if not args.no_training:
            stops = [stop_seconds(tmp, launcher) for _ in range(3)]
            _report("training Stop -> packaged, behind a launcher", [s for s, _ in stops])
            print(f"best model packaged after every Stop: {all(ok for _, ok in stops)}")


if __name__ == "__main__":
    main()
