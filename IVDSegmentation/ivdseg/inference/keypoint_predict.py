"""Running a keypoint package: the image (a 2D picture, or a volume's mid-sagittal slice) and the user's fixed points
in, every keypoint out, the fixed ones exactly where the user put them.

Positions in and out are image pixels (row, column); for a volume they convert to and from patient coordinates
(RAS mm) on the mid-sagittal slice with :class:`KeypointImage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.inference.keypoint_chain import ChainPrior, chain_decode
from ivdseg.inference.keypoints import Letterbox, decode_heatmaps, hint_channels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class KeypointImage:
    """One 2D image for a keypoint model.

    Attributes:
        pixels: (h, w) grey values.
        spacing_rc: mm per pixel along rows and columns (NaN for a picture without spacing).
        pixel_to_ras: 4x4 matrix from (row, column, 0, 1) to RAS mm; for a picture, Slicer's convention for a 2D
            image (LPS x = column, y = row).
        volume: whether the image is a volume's slice (positions are then patient coordinates).
    """

    pixels: np.ndarray
    spacing_rc: tuple
    pixel_to_ras: np.ndarray
    volume: bool

    def to_ras(self, points_rc) -> np.ndarray:
        """(K, 2) pixels -> (K, 3) RAS mm."""
        p = np.asarray(points_rc, float).reshape(-1, 2)
        homogeneous = np.c_[p, np.zeros(len(p)), np.ones(len(p))]
        return (homogeneous @ self.pixel_to_ras.T)[:, :3]

    def from_ras(self, points_ras) -> np.ndarray:
        """(K, 3) RAS mm -> (K, 2) pixels of the slice (a point off the slice is projected onto it)."""
        p = np.asarray(points_ras, float).reshape(-1, 3)
        inverse = np.linalg.inv(self.pixel_to_ras)
        return (np.c_[p, np.ones(len(p))] @ inverse.T)[:, :2]

    def inside(self, points_rc) -> np.ndarray:
        """(K,) whether each pixel position lies on the image."""
        p = np.asarray(points_rc, float).reshape(-1, 2)
        h, w = self.pixels.shape
        return (p[:, 0] >= -0.5) & (p[:, 0] <= h - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= w - 0.5)


def picture(pixels: np.ndarray) -> KeypointImage:
    """A 2D picture: LPS (x, y) = (column, row) mm, as Slicer places a PNG it loads."""
    matrix = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return KeypointImage(np.asarray(pixels), (np.nan, np.nan), matrix, volume=False)


def mid_sagittal(volume) -> KeypointImage:
    """The mid-sagittal slice of a :class:`~ivdseg.io.geometry.Volume` (the middle of its sagittal stack)."""
    from ivdseg.io.geometry import sagittal_slices

    stack, mapping = sagittal_slices(volume)
    mid = stack.shape[0] // 2
    # stack (slice, row, column) -> array (k, j, i) -> RAS, as an affine map of (row, column)
    corners = np.array([[mid, 0, 0], [mid, 1, 0], [mid, 0, 1]], float)
    ras = []
    for n, r, c in corners:
        index = [n, r, c]
        array_index = [0.0, 0.0, 0.0]
        for axis in range(3):
            value = index[axis]
            if mapping.flips[axis]:
                value = mapping.stack_shape[axis] - 1 - value
            array_index[mapping.axes[axis]] = value
        k, j, i = array_index
        ras.append(volume.ijk_to_ras @ np.array([i, j, k, 1.0]))
    origin, along_row, along_col = ras[0][:3], ras[1][:3] - ras[0][:3], ras[2][:3] - ras[0][:3]
    normal = np.cross(along_row, along_col)
    normal /= np.linalg.norm(normal)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = along_row, along_col, normal, origin
    return KeypointImage(stack[mid], tuple(mapping.pixel_spacing_mm), matrix, volume=True)


def read_keypoint_image(path, card: dict, series_uid=None) -> KeypointImage:
    """Reads a 2D picture (PNG, JPG, ...) or a volume (NIfTI, NRRD, DICOM folder) for a keypoint model.

    Raises:
        IvdsegError: an unreadable file, a colour picture, or a volume for a model of 2D pictures.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        import cv2

        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise IvdsegError(f"{path} is not a readable image.")
        if pixels.ndim == 3:
            colour = pixels[..., :3].astype(np.int32)
            if (np.abs(colour - colour[..., :1]) > 2).any():
                raise IvdsegError(f"{path} is a colour image; the keypoint model {card['name']} takes grey images "
                                  f"({card['channels']} channel).")
            pixels = colour[..., 0]
        return picture(pixels.astype(np.float32))
    if card.get("slice_plane") != "sagittal":
        raise IvdsegError(f"{path} is a volume, but the keypoint model {card['name']} takes 2D images "
                          f"({card.get('slice_plane')}); give a PNG or JPG.")
    from ivdseg.io.volumes import read_volume

    return mid_sagittal(read_volume(path, series_uid=series_uid))


class KeypointPredictor:
    """A keypoint package opened for inference (see :func:`ivdseg.inference.backends.load_backend`)."""

    def __init__(self, backend):
        from ivdseg.models.package import card_task

        if card_task(backend.card) != "keypoints":
            raise IvdsegError(f"{backend.card['name']} {backend.card['version']} is a segmentation model, not a "
                              "keypoint model; give a keypoint package (ivdseg train-keypoints makes one).")
        self.backend = backend
        self.card = backend.card
        self.names = list(self.card["keypoints"])
        self.shape = tuple(self.card["input_shape"])
        self.sigma = float(self.card["hint_sigma_px"])
        try:
            self.chain = ChainPrior.from_card(self.card)  # None: each keypoint its heatmap's strongest peak
        except (KeyError, TypeError, ValueError) as exc:
            raise IvdsegError(f"{self.card['name']} {self.card['version']} has a damaged 'decode' entry in its "
                              f"card ({exc}).") from None

    def prepare(self, pixels) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 1) network image and its letterbox, as at training (per-image percentiles, letterboxed)."""
        from ivdseg.data.preprocess import normalize_slices

        percentiles = tuple(self.card["normalization"].get("percentiles", (0.5, 99.5)))
        box = Letterbox(np.asarray(pixels).shape, self.shape)
        image = normalize_slices(np.asarray(pixels, np.float32)[None], percentiles)[0]
        return box.image(image, fill=0.0)[..., None], box

    def predict(self, pixels, fixed: dict[int, tuple] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every keypoint of one image, given the user's fixed points.

        Args:
            pixels: (h, w) image.
            fixed: keypoint index -> (row, column) image pixels the user put it at.

        Returns:
            ((K, 2) image pixels, (K,) heatmap peaks; a fixed point's peak is 1).
        """
        fixed = fixed or {}
        if len(fixed) > len(self.names):
            raise IvdsegError(f"{len(fixed)} fixed points, but the model has only {len(self.names)} keypoints.")
        image, box = self.prepare(pixels)
        hints_rc = np.full((len(self.names), 2), np.nan)
        for k, point in fixed.items():
            hints_rc[k] = box.to_input(np.asarray(point, float)[None])[0]
        x = np.concatenate([image, hint_channels(hints_rc, self.shape, self.sigma)], axis=-1)[None]
        heatmaps = np.asarray(self.backend.predict(x.astype(np.float32)))[0]
        points_in, peaks = (decode_heatmaps(heatmaps) if self.chain is None
                            else chain_decode(heatmaps, self.chain, hints_rc))
        # a peak in the letterbox's padding lies outside the picture: the nearest pixel of the picture is meant
        points = np.clip(box.to_image(points_in), 0.0, np.array(box.image_hw, float) - 1.0)
        for k, point in fixed.items():  # a point the user placed stays exactly there
            points[k], peaks[k] = point, 1.0
        return points, peaks

    def index_of(self, label: str) -> int:
        if label not in self.names:
            raise IvdsegError(f"The keypoint model {self.card['name']} has no keypoint {label!r}; it has "
                              f"{', '.join(self.names)}.")
        return self.names.index(label)
