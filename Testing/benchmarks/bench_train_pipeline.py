"""Benchmark: training steps/s with the real input pipeline vs the same steps on tensors already in memory.

The pipeline (shuffle, augmentation, one-hot, batching, prefetch) should cost little on top of the
network's own step; the ratio says how much. Prints medians over repeats (the machines are noisy).

    python Testing/benchmarks/bench_train_pipeline.py [--dataset DIR] [--size 128] [--steps 30] [--repeats 3]

Without --dataset it exports a small dataset from the real SPIDER slices in the sample data folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))


def _small_dataset(tmp: Path, size: int) -> Path:
    from ivdseg.data.export import ExportOptions, SourceSpec, export_dataset, iter_source_cases
    from ivdseg.data.sample_data import sample_data_dir

    spec = SourceSpec(name="spider", kind="slices", root=sample_data_dir() / "spider_t2_2d",
                      images="images/1[0-9]*_t2_SPACE_slice*.png", labels="labels/{name}",
                      patient_pattern=r"^(\d+)_t2", class_map={"intervertebral disc": [2]})
    cases = iter_source_cases(spec, ["intervertebral disc"])
    export_dataset(cases, ["intervertebral disc"], tmp / "ds", ExportOptions(sizes=(size,), val_fraction=0.2))
    return tmp / "ds"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from ivdseg.data import dataset as ds
    from ivdseg.nn import losses
    from ivdseg.nn import networks
    from ivdseg.nn.augment import make_dataset
    from ivdseg.data.preprocess import normalize_slices

    with tempfile.TemporaryDirectory() as tmp:
        root = a.dataset or _small_dataset(Path(tmp), a.size)
        info = ds.open_dataset(root)
        train_cases, _ = info.split_cases()
        x, y = ds.load_resized(info, train_cases, a.size)
    x = normalize_slices(x)
    model = networks.build_unet2d(input_size=a.size, num_classes=info.num_classes)
    model.compile(keras.optimizers.Adam(1e-3), losses.get_loss("dice_ce"),
                  metrics=[losses.DiceMetric(1)], jit_compile=False)
    pipeline = make_dataset(x, y, info.num_classes, a.batch_size, augment=True, repeat=True)
    xb = tf.constant(x[: a.batch_size, ..., None])
    yb = tf.one_hot(tf.constant(y[: a.batch_size].astype(np.int32)), info.num_classes)
    in_memory = tf.data.Dataset.from_tensors((xb, yb)).repeat()

    def steps_per_s(data):
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # warm-up and tracing
        t0 = time.perf_counter()
        model.fit(data, steps_per_epoch=a.steps, epochs=1, verbose=0)
        return a.steps / (time.perf_counter() - t0)

    runs = {"pipeline": [], "in_memory": []}
    for _ in range(a.repeats):
        runs["pipeline"].append(steps_per_s(pipeline))
        runs["in_memory"].append(steps_per_s(in_memory))
    med = {k: statistics.median(v) for k, v in runs.items()}
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"device {device}, size {a.size}, batch {a.batch_size}, {a.steps} steps x {a.repeats} repeats, "
          f"{len(x)} training slices")
    for k, v in med.items():
        print(f"{k:>10}: median {v:.2f} steps/s = {v * a.batch_size:.1f} slices/s  (runs {[round(r, 2) for r in runs[k]]})")
    print(f"ratio in_memory / pipeline = {med['in_memory'] / med['pipeline']:.3f} (1.0 = the pipeline costs nothing)")


if __name__ == "__main__":
    main()
