"""A series of 2D images (PNG, JPG) read as a volume: one image per slice, in slice order.

For models trained on images as stored (card ``slice_plane`` "as stored"), such as the axial abdominal slices of an
RLE mask table. A folder's images are ordered by the numbers in their names (``slice_2`` before ``slice_10``) and must
share one size. Names in the UW-Madison GI tract layout, ``<case>_<day>/scans/slice_0065_266_266_1.50_1.50.png``
(slice number, width, height, pixel width and height in mm), give the pixel spacing and each slice's id in the
challenge's tables (``case123_day20_slice_0065``); other names give the file's stem as the id and an unknown spacing
(read as 1 mm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.io.geometry import Volume, stack_volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UW_SLICE_NAME = re.compile(r"^slice_(\d+)_(\d+)_(\d+)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)$")


@dataclass
class ImageSeries:
    """The volume of a 2D image series and what names its slices.

    Attributes:
        volume: array (N, H, W): slice k is image ``ids[k]`` (rows top to bottom, columns left to right).
        ids: one id per slice, e.g. ``case123_day20_slice_0065``.
        files: the image of each slice.
    """

    volume: Volume
    ids: list[str]
    files: list[Path]


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_image_series(path: Path) -> bool:
    """Whether ``path`` is a 2D image or a folder of 2D images; a folder that also holds DICOM files (a viewer's
    thumbnails beside a series) is DICOM."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in IMAGE_SUFFIXES
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file()]
    return (any(p.suffix.lower() in IMAGE_SUFFIXES for p in files)
            and not any(_is_dicom_file(p) for p in files if p.suffix.lower() not in IMAGE_SUFFIXES))


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def slice_id(path: Path) -> tuple[str, tuple[float, float] | None, tuple[int, int] | None]:
    """(id, (row, column) spacing in mm or None, (width, height) or None) of one image from its name."""
    path = Path(path)
    match = UW_SLICE_NAME.match(path.stem)
    if not match:
        return path.stem, None, None
    number, width, height, sx, sy = match.groups()
    series = path.parent.parent.name if path.parent.name == "scans" else path.parent.name
    return f"{series}_slice_{number}", (float(sy), float(sx)), (int(width), int(height))


def _read_grey(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise IvdsegError(f"{path} is not an image OpenCV can read.")
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[..., :3]
        if not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
            raise IvdsegError(f"{path} is a colour image; the model takes greyscale images.")
        image = image[..., 0]
    return image


def read_image_series(path) -> ImageSeries:
    """Reads one image, or a folder of images, as an :class:`ImageSeries`.

    Raises:
        IvdsegError: no image, an unreadable or colour image, images of different sizes, a name whose size
            disagrees with its image, or different pixel spacings in one series.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key) if path.is_dir() else []
    if not files:
        raise IvdsegError(f"{path} holds no PNG or JPG image.")
    images, ids, spacings = [], [], set()
    for f in files:
        image = _read_grey(f)
        sid, spacing, size = slice_id(f)
        if size is not None and size != (image.shape[1], image.shape[0]):
            raise IvdsegError(f"{f.name} says {size[0]}x{size[1]} pixels but the image is "
                              f"{image.shape[1]}x{image.shape[0]}.")
        if images and image.shape != images[0].shape:
            raise IvdsegError(f"{f.name} is {image.shape[1]}x{image.shape[0]} but {files[0].name} is "
                              f"{images[0].shape[1]}x{images[0].shape[0]}; the images of one series must share a size.")
        images.append(image)
        ids.append(sid)
        spacings.add(spacing)
    if len(spacings) > 1:
        raise IvdsegError(f"The images of {path} name different pixel spacings; give one series at a time.")
    spacing = spacings.pop() or (float("nan"), float("nan"))
    return ImageSeries(stack_volume(np.stack(images), spacing, float("nan")), ids, files)
