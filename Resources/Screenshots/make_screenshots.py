"""Makes the extension's screenshot: the bundled model's discs outlined on the mid-sagittal slice of the synthetic
spine (ivdseg.data.phantom), through the same code as ``ivdseg segment --overlay``.

Run from the checkout: ``.venv/bin/python Resources/Screenshots/make_screenshots.py``. The synthetic spine is
built in code, so the picture holds no patient's image.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))

from ivdseg.data.phantom import synthetic_spine_volume  # noqa: E402
from ivdseg.inference.backends import load_backend  # noqa: E402
from ivdseg.inference.segment import overlay_png, segment_volume  # noqa: E402
from ivdseg.models.package import resolve_model  # noqa: E402


def main() -> None:
    volume, _ = synthetic_spine_volume()
    backend = load_backend(resolve_model(), backend="onnx", device="cpu")
    result = segment_volume(volume, backend.predict, backend.card, batch_size=8)
    path = overlay_png(volume, result.labelmap, result.classes, Path(__file__).with_name("1.png"))
    print(f"Wrote {path} ({result.slices} slices, {result.volumes_ml}).")


if __name__ == "__main__":
    main()
