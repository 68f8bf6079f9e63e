"""Disc instances and spine levels: one label value per disc, ordered from superior to inferior, named by level.

A predicted disc class holds every disc at once. :func:`split_instances` separates it into discs: 3D connected
components (a disc seen on several sagittal slices stays one), with components that hold two touching discs cut
at their narrowest bridge (a disc is nearly convex, so the high part of its distance map is one piece; two discs
joined by a bridge fall apart there). :func:`name_levels` orders the discs along the spine, infers where a disc is
missing from the spacing of its neighbours, and names each by its level counted from an anchor: a disc whose
level is known (for a lumbar scan, the L5-S1 disc above the sacrum). Without an anchor in view the discs are
numbered, never given a guessed level, and the result says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ivdseg.io.geometry import Volume

# Intervertebral discs from the top of the spine down (C1-C2 has no disc).
DISC_LEVELS = (
    ("C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1")
    + tuple(f"T{n}-T{n + 1}" for n in range(1, 12)) + ("T12-L1",)
    + ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
)
# A gap between two discs wider than this many times the local disc spacing holds a disc that was not found.
GAP_FACTOR = 1.6


@dataclass
class Disc:
    """One disc of a :class:`LevelResult`.

    Attributes:
        value: its label value in ``LevelResult.labels`` (1 = the most superior disc found).
        level: e.g. "L4-L5"; None when no anchor fixes the levels.
        centre_ras: centroid in RAS millimetres.
        voxels: voxel count; ``volume_ml`` its volume.
    """

    value: int
    level: str | None
    centre_ras: tuple[float, float, float]
    voxels: int
    volume_ml: float

    @property
    def name(self) -> str:
        return f"{self.level} intervertebral disc" if self.level else f"intervertebral disc {self.value}"


@dataclass
class LevelResult:
    """Disc instances of one volume.

    Attributes:
        labels: (K, J, I) uint16, 0 = background, each disc its :attr:`Disc.value`.
        discs: from superior to inferior.
        anchor: how the levels were fixed (e.g. "L5-S1: the disc the model marks above the sacrum"); None when
            they are not.
        missing: levels (or, without an anchor, positions "between disc 2 and disc 3") where the spacing says a
            disc was not found.
        note: one sentence for the user when the levels are uncertain; empty otherwise.
    """

    labels: np.ndarray
    discs: list[Disc]
    anchor: str | None = None
    missing: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def uncertain(self) -> bool:
        return self.anchor is None


def _voxel_ras(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """RAS mm of (N, 3) voxel indices given as (k, j, i) rows."""
    ijk1 = np.c_[ijk[:, ::-1], np.ones(len(ijk))]
    return (volume.ijk_to_ras @ ijk1.T).T[:, :3]


def _cores(component: np.ndarray, spacing_kji, min_core_fraction=0.25, levels=(0.3, 0.4, 0.5, 0.6, 0.7)):
    """Labelled cores of a component (the parts of its distance map above a level), or None when it stays one."""
    dist = ndimage.distance_transform_edt(component, sampling=spacing_kji)
    top = dist.max()
    for level in levels:
        cores, n = ndimage.label(dist > level * top, structure=np.ones((3, 3, 3), bool))
        if n < 2:
            continue
        sizes = ndimage.sum_labels(np.ones_like(cores), cores, range(1, n + 1))
        big = [k + 1 for k, s in enumerate(sizes) if s >= min_core_fraction * sizes.max()]
        if len(big) >= 2:
            relabelled, _ = ndimage.label(np.isin(cores, big), structure=np.ones((3, 3, 3), bool))
            return relabelled
    return None


def _height_mm(ijk: np.ndarray, volume: Volume) -> float:
    """Extent along S (mm) of voxels (N, 3) given as (k, j, i)."""
    s = _voxel_ras(volume, ijk)[:, 2]
    return float(s.max() - s.min()) + float(np.abs(volume.ijk_to_ras[2, :3]).max())


def split_instances(mask, volume: Volume, min_fraction=0.05) -> tuple[np.ndarray, int]:
    """Separates a disc mask into discs.

    A component much taller (along S) than the median disc is taken for discs run together; it is cut where the
    cores of its distance map fall apart at different heights, each voxel going to its nearest core.

    Args:
        mask: (K, J, I) bool, the disc class of a labelmap on ``volume``'s grid.
        volume: its geometry (spacing for volumes and distances).
        min_fraction: components smaller than this fraction of the median disc are dropped (specks).

    Returns:
        (labels (K, J, I) int32 with 1..n in no particular order, n).
    """
    mask = np.asarray(mask, bool)
    spacing_kji = volume.spacing_ijk_mm[::-1]
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    out = np.zeros(mask.shape, np.int32)
    if n == 0:
        return out, 0
    sizes = ndimage.sum_labels(mask, components, range(1, n + 1))
    boxes = ndimage.find_objects(components)
    real = [k for k in range(n) if sizes[k] >= 0.2 * sizes.max()]
    offsets = [np.array([b.start for b in box]) for box in boxes]
    heights = {k: _height_mm(np.argwhere(components[boxes[k]] == k + 1) + offsets[k], volume) for k in real}
    median_size = np.median(sizes[real])
    typical = float(np.median(list(heights.values())))
    count = 0
    for k, box in enumerate(boxes):
        if sizes[k] < min_fraction * median_size:
            continue
        component = components[box] == k + 1
        parts = [component]
        if heights.get(k, 0.0) > 1.6 * typical:
            parts = _split_at_bridges(component, offsets[k], volume, spacing_kji, typical) or parts
        for part in parts:
            count += 1
            out[box][part] = count
    return out, count


def _split_at_bridges(component, offset, volume, spacing_kji, typical_height):
    """The discs of a component that holds several, or None when its cores do not lie at different heights."""
    cores = _cores(component, spacing_kji)
    if cores is None:
        return None
    heights = [(_voxel_ras(volume, np.argwhere(cores == c) + offset)[:, 2].mean(), c)
               for c in range(1, cores.max() + 1)]
    heights.sort()
    if min(b[0] - a[0] for a, b in zip(heights, heights[1:])) < typical_height:
        return None  # cores side by side at one height: one disc with a cleft, not two discs
    _, nearest = ndimage.distance_transform_edt(cores == 0, sampling=spacing_kji, return_indices=True)
    owner = cores[tuple(nearest)]
    return [component & (owner == c) for _, c in heights if (component & (owner == c)).any()]


def _merge_same_height(labels: np.ndarray, values: list[int], centres: np.ndarray, voxels: list[int],
                       fraction=0.35):
    """Merges instances whose centres lie at the same height of the spine (closer along S than ``fraction`` of the
    typical step between discs): the pieces of one disc that the mask left apart (a lateral slice cut off, a cleft).
    Returns the kept (values, centres, voxels); ``labels`` is relabelled in place."""
    while len(values) >= 3:
        order = _spine_order(centres)
        steps = -np.diff(centres[order, 2])
        typical = float(np.median(steps[steps > 0.25 * steps.max()])) if steps.max() > 0 else 0.0
        k = int(np.argmin(steps))
        if typical <= 0 or steps[k] >= fraction * typical:
            break
        a, b = order[k], order[k + 1]
        labels[labels == values[b]] = values[a]
        total = voxels[a] + voxels[b]
        centres[a] = (centres[a] * voxels[a] + centres[b] * voxels[b]) / total
        voxels[a] = total
        values, voxels = [v for n, v in enumerate(values) if n != b], [v for n, v in enumerate(voxels) if n != b]
        centres = np.delete(centres, b, axis=0)
    return values, centres, voxels


def _spine_order(centres: np.ndarray) -> np.ndarray:
    """Indices of disc centres (N, 3) RAS from superior to inferior (decreasing S)."""
    return np.argsort(-centres[:, 2], kind="stable")


def _gaps(centres: np.ndarray) -> list[int]:
    """For consecutive ordered centres, how many discs are missing between disc n and n + 1."""
    if len(centres) < 3:
        return [0] * max(len(centres) - 1, 0)
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    out = []
    for n, step in enumerate(steps):
        others = np.delete(steps, n)
        near = others[max(0, n - 2):n + 2] if len(others) > 3 else others
        expected = float(np.median(near))
        out.append(max(0, int(round(step / expected)) - 1) if step > GAP_FACTOR * expected else 0)
    return out


def name_levels(labels: np.ndarray, volume: Volume, anchor_value: int | None = None, anchor_level="L5-S1",
                anchor_reason="") -> LevelResult:
    """Orders the discs of ``labels`` (from :func:`split_instances`) and names them by level.

    Args:
        labels: (K, J, I) disc instances, values 1..n.
        volume: the geometry.
        anchor_value: the instance whose level is known (``anchor_level``), or None: no anchor in view.
        anchor_level: its level, one of :data:`DISC_LEVELS`.
        anchor_reason: how it is known, for the result's ``anchor`` text.

    Returns:
        A :class:`LevelResult` whose ``labels`` number the discs 1..n from superior to inferior.
    """
    if anchor_level not in DISC_LEVELS:
        raise ValueError(f"anchor level must be one of {DISC_LEVELS}, got {anchor_level!r}")
    n = int(labels.max(initial=0))
    values = [v for v in range(1, n + 1) if (labels == v).any()]
    spacing = volume.spacing_ijk_mm
    centres, voxels = [], []
    for v in values:
        ijk = np.argwhere(labels == v)
        centres.append(_voxel_ras(volume, ijk).mean(axis=0))
        voxels.append(len(ijk))
    centres = np.array(centres).reshape(-1, 3)
    labels = np.array(labels, copy=True)
    anchor_voxel = tuple(np.argwhere(labels == anchor_value)[0]) if anchor_value in values else None
    values, centres, voxels = _merge_same_height(labels, values, centres, voxels)
    if anchor_voxel is not None:  # the anchor may have been merged into the other piece of its disc
        anchor_value = int(labels[anchor_voxel])
    order = _spine_order(centres)
    gaps = _gaps(centres[order])
    # Position along the spine of each ordered disc, counting the discs the gaps say are missing.
    positions = np.concatenate([[0], np.cumsum(np.array(gaps, int) + 1)]) if len(order) else np.zeros(0, int)
    relabelled = np.zeros(labels.shape, np.uint16)
    for new, old in enumerate(order):
        relabelled[labels == values[old]] = new + 1
    level_of = [None] * len(order)
    missing: list[str] = []
    anchor = None
    note = ""
    if anchor_voxel is not None:
        at = int(np.flatnonzero(np.array(values)[order] == anchor_value)[0])
        base = DISC_LEVELS.index(anchor_level) - positions[at]
        if base < 0 or base + positions[-1] >= len(DISC_LEVELS):
            note = (f"The discs found do not fit between C2-C3 and L5-S1 when counted from the {anchor_level} "
                    "disc; the levels are left unnamed.")
        else:
            level_of = [DISC_LEVELS[base + p] for p in positions]
            missing = [DISC_LEVELS[base + p] for p in range(positions[0], positions[-1] + 1) if p not in set(positions)]
            anchor = f"{anchor_level}: {anchor_reason}" if anchor_reason else anchor_level
    else:
        note = ("No anchor of the spine (the L5-S1 disc above the sacrum) is in view, so the discs are numbered from "
                "superior to inferior, not named by level.")
        missing = [f"between disc {k + 1} and disc {k + 2}" for k, g in enumerate(gaps) if g]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    discs = [Disc(value=k + 1, level=level_of[k], centre_ras=tuple(float(x) for x in centres[old]),
                  voxels=int(voxels[old]), volume_ml=round(voxels[old] * voxel_ml, 3))
             for k, old in enumerate(order)]
    return LevelResult(labels=relabelled, discs=discs, anchor=anchor, missing=missing, note=note)


# Distinct colours for neighbouring discs (r, g, b in 0..1), cycled from the top.
DISC_COLORS = [(0.27, 0.80, 0.64), (0.95, 0.62, 0.20), (0.40, 0.52, 0.90), (0.90, 0.35, 0.55), (0.60, 0.80, 0.25),
               (0.70, 0.45, 0.85), (0.20, 0.70, 0.85), (0.95, 0.85, 0.30)]


def level_support(card: dict) -> tuple[str, dict] | None:
    """(class name, rule) of the card's class whose instances are named by spine level, or None."""
    for name, rule in (card.get("instances") or {}).items():
        if rule.get("rule") == "spine levels":
            return name, rule
    return None


def disc_levels(labelmap: Volume, card: dict, anchor_mask: np.ndarray | None = None,
                anchor_name: str = "") -> tuple[LevelResult, Volume, list[dict]]:
    """The disc instances of a model's labelmap, named by level, as a new labelmap and its classes.

    The card's ``instances`` entry says which class holds the discs and where the anchor disc (the L5-S1 disc above
    the sacrum) comes from: a class of the same model (``anchor_class``), or another model (``anchor_model``), whose
    lumbosacral-disc mask the caller passes as ``anchor_mask`` (named ``anchor_name``). The disc instance that this
    mask covers for at least 30 % of its voxels is the anchor; without one the discs are numbered. In the new
    labelmap the discs are 1..n from superior to inferior and the model's other classes follow from n + 1.

    Raises:
        ValueError: the card names no class with spine levels.
    """
    support = level_support(card)
    if support is None:
        raise ValueError(f"the model {card.get('name')} does not name disc levels")
    disc_name, rule = support
    value_of = {c["name"]: c["value"] for c in card["classes"]}
    anchor_class = rule.get("anchor_class")
    mask = labelmap.array == value_of[disc_name]
    if anchor_mask is None and anchor_class in value_of:
        anchor_mask = labelmap.array == value_of[anchor_class]
        mask |= anchor_mask
        anchor_name = anchor_class
    labels, n = split_instances(mask, labelmap)
    anchor_value = None
    if anchor_mask is not None and anchor_mask.any() and n:
        counts = np.bincount(labels[anchor_mask], minlength=n + 1)[1:]
        sizes = np.bincount(labels.reshape(-1), minlength=n + 1)[1:]
        best = int(np.argmax(counts))
        if counts[best] >= 0.3 * sizes[best]:
            anchor_value = best + 1
    result = name_levels(labels, labelmap, anchor_value, rule.get("anchor_level", "L5-S1"),
                         f"the disc {anchor_name} marks as the lumbosacral disc" if anchor_name else "")
    if not result.discs:
        result.note = "No disc was found in this volume, so there are no levels to name."
    elif anchor_mask is None:
        result.note = (f"The model {card.get('name')} marks no anchor of the spine (such as the L5-S1 disc above "
                       "the sacrum), so the discs are numbered from superior to inferior, not named by level.")
    elif anchor_value is None:
        result.note = (f"{anchor_name or 'The model'} finds no lumbosacral disc (L5-S1, above the sacrum) among "
                       "the discs in view, so they are numbered from superior to inferior, not named by level.")
    disc_entry = next(c for c in card["classes"] if c["name"] == disc_name)
    classes, out = [], result.labels.astype(np.uint16)
    for d in result.discs:
        entry = {"value": d.value, "name": d.name, "level": d.level, "color": list(DISC_COLORS[(d.value - 1) % 8])}
        if disc_entry.get("terminology"):
            entry["terminology"] = disc_entry["terminology"]
        classes.append(entry)
    if not classes:  # no disc: the disc class stays, empty, so that a segmentation still shows what was sought
        classes.append({**disc_entry, "value": 1})
    others = [c for c in card["classes"] if c["name"] not in (disc_name, anchor_class)]
    for k, c in enumerate(others):
        new = len(classes) + 1 + k
        out[(labelmap.array == c["value"]) & (out == 0)] = new
        classes.append({**c, "value": new})
    if out.max(initial=0) > 255:
        raise ValueError("more than 255 labels")
    return result, Volume(out.astype(np.uint8), labelmap.ijk_to_ras.copy()), classes
