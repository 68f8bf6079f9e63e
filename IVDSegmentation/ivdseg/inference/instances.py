"""Named instances of a class, as a model card asks for them (``card["instances"][class]["rule"]``).

Two rules: "spine levels" (discs or vertebrae from superior to inferior, named by level: :mod:`ivdseg.inference.levels`)
and "patient left / right" (paired organs such as the lungs). Sides come from the image geometry, patient
coordinates (RAS: +x is the patient's right), never from the array order, so a flipped or LPS-stored image gets
the same names. A 2D radiograph has no geometry of its own: :func:`radiograph_volume` gives it the display
convention of chest radiographs (the patient's right on the viewer's left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ivdseg.io.geometry import Volume

RULES = ("spine levels", "patient left / right")


@dataclass
class SideInstance:
    value: int  # 1 = the patient's right, 2 = the patient's left
    side: str  # "right" or "left"
    voxels: int
    centre_ras: tuple[float, float, float]


def radiograph_volume(image: np.ndarray, pixel_spacing_mm=(1.0, 1.0)) -> Volume:
    """A one-slice Volume of a 2D radiograph (rows top -> bottom = superior -> inferior, columns = the patient's
    right -> left, the display convention of PA and AP chest radiographs)."""
    row, col = (float(s) for s in pixel_spacing_mm)
    ijk_to_ras = np.array([[-col, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, -row, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return Volume(np.asarray(image)[None], ijk_to_ras)


def split_left_right(mask, volume: Volume, min_fraction=0.1) -> tuple[np.ndarray, list[SideInstance], str]:
    """The two sides of a paired organ's mask.

    The two largest connected components (each at least ``min_fraction`` of the largest) are the two organs; the
    one whose centre lies further to the patient's right (larger RAS x) is "right". One component alone is named by
    the side of the body's midline (the middle of the field of view) it lies on, and said to be uncertain.

    Returns:
        (labels (K, J, I) uint8: 1 = right, 2 = left, 0 elsewhere; instances; a note, empty when certain).
    """
    mask = np.asarray(mask, bool)
    components, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    labels = np.zeros(mask.shape, np.uint8)
    if n == 0:
        return labels, [], ""
    sizes = ndimage.sum_labels(mask, components, range(1, n + 1))
    keep = [k + 1 for k in np.argsort(-sizes)[:2] if sizes[k] >= min_fraction * sizes.max()]

    def centre(selection):
        ijk = np.argwhere(selection)[:, ::-1]
        return (volume.ijk_to_ras @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3].mean(axis=0)

    centres = {k: centre(components == k) for k in keep}
    note = ""
    if len(keep) == 2:
        right, left = sorted(keep, key=lambda k: -centres[k][0])
        sides = {right: "right", left: "left"}
    else:
        shape_ijk = np.array(mask.shape[::-1], float)
        middle = (volume.ijk_to_ras @ np.r_[(shape_ijk - 1) / 2, 1.0])[0]
        sides = {keep[0]: "right" if centres[keep[0]][0] > middle else "left"}
        note = ("Only one of the pair is found; its side comes from the middle of the field of view, which may not "
                "be the body's midline.")
    out = []
    for k, side in sides.items():
        value = 1 if side == "right" else 2
        labels[components == k] = value
        out.append(SideInstance(value, side, int(sizes[k - 1]), tuple(float(x) for x in centres[k])))
    return labels, sorted(out, key=lambda s: s.value), note


def instance_rules(card: dict) -> dict[str, str]:
    """{class name: rule} of the card's classes whose instances are named (rules of :data:`RULES`)."""
    return {name: spec.get("rule") for name, spec in (card.get("instances") or {}).items() if spec.get("rule") in RULES}


def named_instances(labelmap: Volume, card: dict, anchor_mask=None, anchor_name=""):
    """Applies every instance rule of the card to a model's labelmap.

    The classes keep their order and are numbered anew from 1: the discs of a spine-levels class (superior first),
    then each other class, a left / right class as its right, then its left instance.

    Returns:
        (levels: the :class:`~ivdseg.inference.levels.LevelResult` of the spine-levels class or None, the new
        labelmap, its classes (each with its ``name`` and, for instances, ``level`` or ``side``), notes).

    Raises:
        ValueError: the card names no instance rule.
    """
    from ivdseg.inference.levels import disc_levels, level_support

    rules = instance_rules(card)
    if not rules:
        raise ValueError(f"the model {card.get('name')} names no instances")
    levels, notes = None, []
    classes = [dict(c) for c in card["classes"]]
    if level_support(card) is not None:
        levels, labelmap, classes = disc_levels(labelmap, card, anchor_mask, anchor_name)
        if levels.note:
            notes.append(levels.note)
    out = np.zeros(labelmap.array.shape, np.uint8)
    final = []
    for entry in classes:
        mask = labelmap.array == entry["value"]
        if rules.get(entry["name"]) == "patient left / right":
            sides, found, note = split_left_right(mask, labelmap)
            if note:
                notes.append(f"{entry['name']}: {note}")
            parts = [(sides == s.value, {"name": f"{s.side} {entry['name']}", "side": s.side}) for s in found]
        else:
            parts = [(mask, {})]
        for part, extra in parts:
            value = len(final) + 1
            if value > 255:
                raise ValueError("more than 255 labels")
            out[part] = value
            final.append({**entry, **extra, "value": value})
    return levels, Volume(out, labelmap.ijk_to_ras.copy()), final, notes
