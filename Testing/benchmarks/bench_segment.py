"""Benchmark: the whole segment path vs the bare network, batched vs one call per slice, peak memory.

(a) file -> labelmap written (read, slice, normalise, resize, predict, resize back, argmax, write) against
    the bare prediction of the same prepared slices: the pipeline should cost at most 1.25x the network.
(b) batched prediction against one call per slice.
(c) peak resident memory of a `ivdseg segment` subprocess.
(d) the whole `ivdseg segment` command (start, imports, model load, segment, write), as a user runs it.
Medians over repeats; each backend that is installed and that the package carries is measured.
With --record, (d) and the warm segment time go into the package's card ("inference_time"), as the
recipes do for the bundled models.

    python Testing/benchmarks/bench_segment.py [--input VOLUME] [--model PACKAGE] [--repeats 5] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    from ivdseg.data.sample_data import sample_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, default=sample_data_dir() / "ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    p.add_argument("--model", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--record", action="store_true", help="write the times into the package's card")
    a = p.parse_args(argv)

    from ivdseg.inference.backends import load_backend
    from ivdseg.inference.predict import prepare_slices, with_tta
    from ivdseg.models.package import resolve_model
    from ivdseg.inference.segment import check_sagittal, segment_volume, write_result
    from ivdseg.io.volumes import read_volume

    package = resolve_model(a.model)
    backends = ["tensorflow", "onnx"] if (Path(package) / "model.onnx").exists() else ["tensorflow"]
    volume = read_volume(a.input)
    stack, _ = check_sagittal(volume)
    print(f"input {a.input.name}: {len(stack)} sagittal slices of {stack.shape[1]}x{stack.shape[2]}; "
          f"model {Path(package).name}; batch {a.batch_size}; median of {a.repeats}")
    timing = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in backends:
            backend = load_backend(package, name, a.device)
            prepared = prepare_slices(stack, backend.card)
            network = with_tta(backend.predict, backend.card)  # the bare network as the card runs it (its TTA)

            def bare_batched():
                for s in range(0, len(prepared), a.batch_size):
                    network(prepared[s:s + a.batch_size])

            def bare_single():
                for s in range(len(prepared)):
                    network(prepared[s:s + 1])

            def whole():
                v = read_volume(a.input)
                r = segment_volume(v, backend.predict, backend.card, a.batch_size, device=backend.device)
                write_result(r, Path(tmp) / f"out-{name}.nii.gz", backend.card, overwrite=True)

            bare_batched()  # warm-up (graph tracing, session start)
            whole()
            t_bare = _median_time(bare_batched, a.repeats)
            t_single = _median_time(bare_single, max(1, a.repeats // 2))
            t_whole = _median_time(whole, a.repeats)
            n = len(prepared)
            print(f"[{name} on {backend.device}] bare batched {t_bare:.3f} s ({n / t_bare:.1f} slices/s); "
                  f"whole segment {t_whole:.3f} s ({n / t_whole:.1f} slices/s); "
                  f"one call per slice {t_single:.3f} s")
            print(f"[{name}] ratio whole/bare = {t_whole / t_bare:.2f} (target <= 1.25); "
                  f"ratio per-slice/batched = {t_single / t_bare:.2f}")
            timing[name] = {"segment_seconds": round(t_whole, 3), "device": backend.device}
        for name in backends:
            # a fresh wrapper process per backend, so each peak is its own
            env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "3"}
            cmd = [sys.executable, "-m", "ivdseg", "segment", str(a.input), "-o", str(Path(tmp) / f"mem-{name}.nii.gz"),
                   "--backend", name, "--progress", "none", "--overwrite", "--device", a.device,
                   "--model", str(package), "--batch-size", str(a.batch_size)]
            probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, check=True, capture_output=True,
                                 text=True).stdout
            print(f"[{name}] peak resident memory of `ivdseg segment`: {int(out.split()[-1]) / 1024:.0f} MiB")
            t_process = _median_time(lambda: subprocess.run(cmd, env=env, check=True, capture_output=True),
                                     a.repeats)
            print(f"[{name}] the whole `ivdseg segment` command: {t_process:.2f} s "
                  f"(ratio command/segment once loaded = {t_process / timing[name]['segment_seconds']:.2f})")
            timing[name]["process_seconds"] = round(t_process, 2)
    if a.record:
        from ivdseg.models.package import update_card

        entry = {"volume": f"{len(stack)} sagittal slices of {stack.shape[1]} x {stack.shape[2]} ({a.input.name})",
                 "cpu_cores": os.cpu_count(), "cpu": _cpu_name(), "repeats": a.repeats, "backends": timing,
                 "command": "python Testing/benchmarks/bench_segment.py --model PACKAGE --record"}
        update_card(package, {"inference_time": entry})
        print(f"recorded in {Path(package) / 'model.json'}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
