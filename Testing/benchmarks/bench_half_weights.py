"""Benchmark: a package's weights stored as float32 against float16 (``--weights float16``).

Makes a float16 copy of a package in a temporary folder (weights rounded, Keras and ONNX files halved) and prints:
(a) the bytes of model.keras and model.onnx, and their ratio;
(b) the largest difference of the output probabilities, Keras and ONNX Runtime, on a batch of random slices and on
    the bundled sample's slices;
(c) ONNX Runtime's session start and a batch of slices, median of repeats, float16 over float32 (the Casts of the
    float16 copy are folded into constants when the session starts, so the batch should cost the same).

    python Testing/benchmarks/bench_half_weights.py [--model PACKAGE] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_segment import _median_time as _median  # this folder is first on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))


def _sample_slices(path: Path, card, n):
    """n slices from the middle of a sample volume, prepared as the package's input."""
    from ivdseg.inference.predict import prepare_slices
    from ivdseg.inference.segment import check_sagittal
    from ivdseg.io.volumes import read_volume

    stack, _ = check_sagittal(read_volume(path))
    middle = max(0, len(stack) // 2 - n // 2)
    return prepare_slices(stack[middle:middle + n], card)


def main(argv=None):
    import onnxruntime as ort

    from ivdseg.data.sample_data import sample_data_dir
    from ivdseg.models import half
    from ivdseg.models.package import load_package, resolve_model, save_package

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="package folder (default: the bundled disc model)")
    p.add_argument("--input", type=Path, default=sample_data_dir() / "ivd_lumbar_t2/nifti/case25_T2w.nii.gz",
                   help="a sagittal volume whose middle slices are also compared (default: the demo case)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)

    source = resolve_model(a.model)
    model, card = load_package(source)
    if not (source / "model.onnx").is_file():
        raise SystemExit(f"{source} has no model.onnx to compare.")
    size = card["input_size"]
    x = np.random.default_rng(0).random((a.batch, size, size, card["channels"]), dtype=np.float32)
    inputs = {"random slices": x}
    if a.input.is_file():
        inputs[f"{a.input.name} slices"] = _sample_slices(a.input, card, a.batch)
    reference = {name: np.asarray(model(v, training=False)) for name, v in inputs.items()}

    with tempfile.TemporaryDirectory() as tmp:
        half.round_weights(model)
        card = {k: v for k, v in card.items() if k not in ("format", "format_version", "weights_storage")}
        small = save_package(model, card, Path(tmp) / "half", extra_files={"model.onnx": source / "model.onnx"},
                             weights="float16")
        # the float32 ONNX copy of the original package, beside the halved one
        shutil.copy2(source / "model.onnx", Path(tmp) / "full.onnx")
        print(f"package {source.name} {card['version']}, {model.count_params():,} parameters")
        print("(a) bytes        float32        float16   ratio")
        for name in ("model.keras", "model.onnx"):
            big, little = (source / name).stat().st_size, (small / name).stat().st_size
            print(f"    {name:<11} {big:>12,} {little:>13,}   {little / big:.3f}")

        loaded, _ = load_package(small)
        sessions = {}
        for label, path in (("float32", Path(tmp) / "full.onnx"), ("float16", small / "model.onnx")):
            start = _median(lambda: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), 3)
            sessions[label] = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), start)
        print("(b) largest probability difference, float16 copy against the float32 package")
        for name, v in inputs.items():
            keras_diff = float(np.abs(np.asarray(loaded(v, training=False)) - reference[name]).max())
            outs = {label: s.run(None, {s.get_inputs()[0].name: v})[0] for label, (s, _) in sessions.items()}
            onnx_diff = float(np.abs(outs["float16"] - outs["float32"]).max())
            changed = float(np.mean(outs["float16"].argmax(-1) != outs["float32"].argmax(-1)))
            print(f"    {name} ({len(v)}): Keras {keras_diff:.2e}, ONNX Runtime {onnx_diff:.2e}; "
                  f"pixels whose class changes {changed:.2e}")
        print(f"(c) ONNX Runtime, batch of {a.batch} at {size} px, median of {a.repeats}")
        timings = {}
        for label, (session, start) in sessions.items():
            name = session.get_inputs()[0].name
            session.run(None, {name: x})
            timings[label] = _median(lambda: session.run(None, {name: x}), a.repeats)
            print(f"    {label}: session start {start:.3f} s, batch {timings[label]:.3f} s")
        print(f"    float16 / float32: session start {sessions['float16'][1] / sessions['float32'][1]:.2f}, "
              f"batch {timings['float16'] / timings['float32']:.2f}")


if __name__ == "__main__":
    main()
