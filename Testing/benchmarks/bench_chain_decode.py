"""What decoding a keypoint package's heatmaps as one chain costs, and what it has to choose from, on a keypoint
dataset's images (no hints, the first prediction):

    .venv/bin/python Testing/benchmarks/bench_chain_decode.py --model PKG --dataset DATASET [--split val] [--repeats 7]

Prints the medians of one image's network run, its one-peak-each decoding and its chain decoding (ONNX Runtime on the
CPU; the chain fitted to the dataset's training points, at the card's weight or 1), and their ratio; then how many
heatmaps have a rival peak (a second local peak of at least half the strongest), and how much of the first
prediction's error is left once each image's mean shift is taken away (the errors that move neighbouring points
together).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))

from ivdseg.data.keypoint_data import read_dataset  # noqa: E402
from ivdseg.inference.backends import load_backend  # noqa: E402
from ivdseg.inference.keypoint_chain import ChainPrior, chain_decode, fit_chain_prior, peak_candidates  # noqa: E402
from ivdseg.inference.keypoints import decode_heatmaps  # noqa: E402
from ivdseg.models.package import resolve_model  # noqa: E402

from bench_segment import _median_time  # noqa: E402  (this folder is first on sys.path when run as a script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--repeats", type=int, default=7)
    a = parser.parse_args()
    backend = load_backend(resolve_model(a.model), "onnx")
    ds = read_dataset(a.dataset)
    part = ds.part(a.split, scored_only=True)
    k = len(ds.meta["keypoints"])
    images = part["image"][..., None].astype(np.float32)
    x = np.concatenate([images, np.zeros((*images.shape[:3], k), np.float32)], axis=-1)
    chain = ChainPrior.from_card(backend.card) or fit_chain_prior(ds.part("train")["points"])
    heatmaps = np.asarray(backend.predict(x))
    one = x[:1]
    network = _median_time(lambda: backend.predict(one), a.repeats)
    peaks = _median_time(lambda: decode_heatmaps(heatmaps[0]), a.repeats)
    chained = _median_time(lambda: chain_decode(heatmaps[0], chain), a.repeats)
    print(f"{backend.card['name']} {backend.card['version']}, {k} keypoints, input {images.shape[1]} x "
          f"{images.shape[2]}, {len(images)} {a.split} images, ONNX Runtime, CPU, medians of {a.repeats}")
    print(f"one image: network {network * 1000:.0f} ms; decoding one peak each {peaks * 1000:.1f} ms, as "
          f"{'a chain' if chain.structure == 'chain' else 'columns'} "
          f"(weight {chain.weight:g}) {chained * 1000:.1f} ms; ratio {chained / peaks:.1f}")
    rivals = [int((values >= 0.5 * values[0]).sum()) for h in heatmaps for values in
              (peak_candidates(h[..., n])[1] for n in range(k))]
    print(f"heatmaps with a rival peak (>= half the strongest): {np.mean(np.array(rivals) > 1) * 100:.0f} % of "
          f"{len(rivals)}; peaks of that height per heatmap: {np.mean(rivals):.2f}")
    first = np.stack([decode_heatmaps(h)[0] for h in heatmaps])
    delta = (first - part["points"]) / part["scale_rc"][:, None, :]  # image pixels
    error = np.linalg.norm(delta, axis=-1).mean()
    left = np.linalg.norm(delta - delta.mean(axis=1, keepdims=True), axis=-1).mean()
    print(f"first prediction, one peak each: mean radial error {error:.1f} image px; {left:.1f} px once each "
          f"image's mean shift is taken away ({left / error * 100:.0f} %)")


if __name__ == "__main__":
    main()
