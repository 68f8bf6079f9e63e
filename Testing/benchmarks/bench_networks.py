"""Benchmark: the network time of model packages side by side, ONNX Runtime on this machine's CPU.

The same batch of random slices (the first package's input size and channels) through each package's model.onnx;
median of repeats after one warm-up run, and each package's time over the first's. What a wider network costs at
inference, before any pre- or post-processing (bench_segment.py measures the whole command).

    python Testing/benchmarks/bench_networks.py PACKAGE [PACKAGE ...] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench_segment import _median_time  # this folder is first on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))


def main(argv=None):
    import onnxruntime as ort

    from ivdseg.models.package import read_card, resolve_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("packages", nargs="+", help="package folders or bundled model names")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)

    packages = [resolve_model(name) for name in a.packages]
    first = read_card(packages[0])
    shape = (a.batch, first["input_size"], first["input_size"], first["channels"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    print(f"ONNX Runtime (CPU), a batch of {a.batch} at {shape[1]} px, median of {a.repeats}")
    times = []
    for package in packages:
        card = read_card(package)
        if (card["input_size"], card["channels"]) != (shape[1], shape[3]):
            raise SystemExit(f"{package} takes {card['input_size']} px x {card['channels']}, not {shape[1:]}.")
        session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        session.run(None, {name: x})
        times.append(_median_time(lambda: session.run(None, {name: x}), a.repeats))
        params = card.get("architecture", {}).get("parameters", "n/a")
        print(f"  {card['name']} {card['version']} ({params} parameters): {times[-1]:.3f} s, "
              f"x{times[-1] / times[0]:.2f}")


if __name__ == "__main__":
    main()
