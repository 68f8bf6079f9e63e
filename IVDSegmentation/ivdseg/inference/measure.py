"""Per-disc measurements: volume, mid-sagittal heights and depth, disc height index, signal ratio, uncertainty.

Every length is measured on the disc's own mid-sagittal slice (the sagittal slice where it is largest), in mm,
along the disc's axes found by principal components of its pixels: the long axis runs anterior to posterior
(its extent is the antero-posterior depth), the short axis is the height direction. Heights are the disc's extent
along the short axis on lines through the anterior sixth, the middle and the posterior sixth of the depth. The
disc height index (where the model segments vertebrae) is the middle height over the mean middle height of the
vertebral bodies just above and below, measured on the same slice along the same line. The signal-intensity
ratio is the disc's mean intensity over that of the spinal canal (cerebrospinal fluid) where the model has that
class, else of the adjacent vertebral bodies.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ivdseg.inference.levels import LevelResult
from ivdseg.io.atomic import atomic_write
from ivdseg.io.geometry import Volume, sagittal_slices

STEP_MM = 0.1  # sampling step along a measuring line


@dataclass
class DiscMeasurement:
    """One row of the measurement table (units in the field names)."""

    value: int
    level: str
    name: str
    volume_ml: float
    anterior_height_mm: float
    middle_height_mm: float
    posterior_height_mm: float
    ap_depth_mm: float
    disc_height_index: float | None
    signal_ratio: float | None
    signal_reference: str
    uncertainty: float | None
    review: bool | None  # None: no threshold chosen for this model


def _axes_mm(mask2d: np.ndarray, spacing_rc):
    """Centre (mm), unit long axis (anterior -> posterior) and unit short axis of a 2D mask."""
    rows, cols = np.nonzero(mask2d)
    pts = np.c_[cols * spacing_rc[1], rows * spacing_rc[0]]  # x: anterior -> posterior, y: superior -> inferior
    centre = pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
    long_axis = vecs[:, -1] if vecs[0, -1] >= 0 else -vecs[:, -1]
    short_axis = np.array([-long_axis[1], long_axis[0]])
    return centre, long_axis, short_axis, pts


def _extent_on_line(mask2d, spacing_rc, point_mm, direction, reach_mm=60.0) -> float:
    """Length (mm) of ``mask2d`` on the line through ``point_mm`` along ``direction`` (samples every STEP_MM)."""
    t = np.arange(-reach_mm, reach_mm + STEP_MM / 2, STEP_MM)
    xy = point_mm[None, :] + t[:, None] * direction[None, :]
    cols = np.rint(xy[:, 0] / spacing_rc[1]).astype(int)
    rows = np.rint(xy[:, 1] / spacing_rc[0]).astype(int)
    inside = (rows >= 0) & (rows < mask2d.shape[0]) & (cols >= 0) & (cols < mask2d.shape[1])
    hit = np.zeros(len(t), bool)
    hit[inside] = mask2d[rows[inside], cols[inside]]
    return float(hit.sum() * STEP_MM)


def disc_shape(mask2d: np.ndarray, spacing_rc) -> dict:
    """Antero-posterior depth and anterior / middle / posterior heights (mm) of one disc's mid-sagittal mask,
    with the measuring geometry (centre, axes) for the neighbours' heights."""
    centre, long_axis, short_axis, pts = _axes_mm(mask2d, spacing_rc)
    along = (pts - centre) @ long_axis
    pixel = float(np.mean(spacing_rc))
    lo, hi = along.min() - pixel / 2, along.max() + pixel / 2
    depth = hi - lo
    heights = [_extent_on_line(mask2d, spacing_rc, centre + (lo + f * depth) * long_axis, short_axis)
               for f in (1 / 6, 1 / 2, 5 / 6)]
    return {"ap_depth_mm": depth, "anterior_height_mm": heights[0], "middle_height_mm": heights[1],
            "posterior_height_mm": heights[2], "centre": centre, "long_axis": long_axis, "short_axis": short_axis}


def _neighbour_heights(vertebra2d, spacing_rc, shape) -> list[float]:
    """Middle heights of the vertebral bodies just above and below a disc, on the disc's short-axis line."""
    t = np.arange(0.0, 80.0, STEP_MM)
    out = []
    for sign in (-1.0, 1.0):
        xy = shape["centre"][None, :] + sign * t[:, None] * shape["short_axis"][None, :]
        cols = np.rint(xy[:, 0] / spacing_rc[1]).astype(int)
        rows = np.rint(xy[:, 1] / spacing_rc[0]).astype(int)
        inside = (rows >= 0) & (rows < vertebra2d.shape[0]) & (cols >= 0) & (cols < vertebra2d.shape[1])
        hit = np.zeros(len(t), bool)
        hit[inside] = vertebra2d[rows[inside], cols[inside]]
        if not hit.any():
            continue
        first = int(np.argmax(hit))
        run = np.argmax(~hit[first:]) if (~hit[first:]).any() else len(hit) - first
        out.append(float(run * STEP_MM))
    return out


def measure_discs(image: Volume, levels: LevelResult, labelmap: Volume | None = None, classes=None,
                  entropy: Volume | None = None, review_threshold: float | None = None) -> list[DiscMeasurement]:
    """One :class:`DiscMeasurement` per disc of ``levels``.

    Args:
        image: the MRI (for the signal ratio).
        levels: the disc instances (their labels share ``image``'s grid).
        labelmap, classes: the model's labelmap and card classes, for the vertebra and canal classes (DHI and the
            signal reference); None: those columns stay empty.
        entropy: per-voxel normalised predictive entropy; a disc's uncertainty is its mean over the disc.
        review_threshold: uncertainty above which a disc is flagged for review (chosen on validation data).
    """
    stack, mapping = sagittal_slices(image)
    discs, _ = sagittal_slices(Volume(levels.labels, image.ijk_to_ras))
    spacing = mapping.pixel_spacing_mm
    class_value = {c["name"]: c["value"] for c in classes or []}
    other = sagittal_slices(labelmap)[0] if labelmap is not None else None
    vertebra = other == class_value["vertebra"] if other is not None and "vertebra" in class_value else None
    canal = other == class_value["spinal canal"] if other is not None and "spinal canal" in class_value else None
    unc = sagittal_slices(entropy)[0].astype(np.float32) if entropy is not None else None
    rows = []
    for disc in levels.discs:
        mask = discs == disc.value
        k = int(np.argmax(mask.reshape(len(mask), -1).sum(1)))
        shape = disc_shape(mask[k], spacing)
        dhi = None
        if vertebra is not None:
            bodies = _neighbour_heights(vertebra[k], spacing, shape)
            dhi = round(shape["middle_height_mm"] / float(np.mean(bodies)), 3) if bodies else None
        ratio, reference = None, ""
        disc_signal = float(stack[mask].mean())
        if canal is not None and canal[k].any():
            ratio, reference = disc_signal / max(float(stack[k][canal[k]].mean()), 1e-6), "spinal canal"
        elif vertebra is not None and vertebra[k].any():
            ratio, reference = disc_signal / max(float(stack[k][vertebra[k]].mean()), 1e-6), "vertebral body"
        u = round(float(unc[mask].mean()), 4) if unc is not None else None
        rows.append(DiscMeasurement(
            value=disc.value, level=disc.level or "", name=disc.name, volume_ml=disc.volume_ml,
            anterior_height_mm=round(shape["anterior_height_mm"], 2), middle_height_mm=round(shape["middle_height_mm"], 2),
            posterior_height_mm=round(shape["posterior_height_mm"], 2), ap_depth_mm=round(shape["ap_depth_mm"], 2),
            disc_height_index=dhi, signal_ratio=round(ratio, 3) if ratio is not None else None,
            signal_reference=reference, uncertainty=u,
            review=None if u is None or review_threshold is None else bool(u > review_threshold)))
    return rows


def write_table(path, rows: list[DiscMeasurement], overwrite=False) -> Path:
    """Writes the measurements as CSV (one row per disc, units in the header), atomically."""
    names = [f.name for f in fields(DiscMeasurement)]

    def write(temp):
        with open(temp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            for r in rows:
                writer.writerow(["" if getattr(r, n) is None else getattr(r, n) for n in names])

    return atomic_write(Path(path), write, overwrite=overwrite)
