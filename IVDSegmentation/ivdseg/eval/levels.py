"""Level accuracy and disc-centre error of ``segment --levels`` on dataset cases whose labels say the levels.

A dataset for this (``Resources/recipes/ivd-lumbosacral-2d.sh`` makes one) has the classes "intervertebral disc"
and "lumbosacral disc": the truth's discs are split into instances and counted upward from the lumbosacral one,
which gives every truth disc its level. Each truth disc is matched to the predicted disc whose centre is nearest
(closer than half the spacing between truth discs); it is right when the two levels agree. Distances are in mm
where the case keeps its pixel spacing, else in pixels (PNG slices), and said so.
"""

from __future__ import annotations

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.inference.levels import disc_levels, name_levels, split_instances
from ivdseg.inference.segment import segment_volume
from ivdseg.io.geometry import stack_volume

TRUTH_CLASSES = ("intervertebral disc", "lumbosacral disc")


def _truth(label, volume, info):
    """(level, centre, mask) of each truth disc of one case."""
    disc, lumbosacral = (info.classes.index(c) for c in TRUTH_CLASSES)
    mask = (label == disc) | (label == lumbosacral)
    instances, n = split_instances(mask, volume)
    anchor = None
    if n and (label == lumbosacral).any():
        anchor = int(np.argmax(np.bincount(instances[label == lumbosacral], minlength=n + 1)[1:])) + 1
    result = name_levels(instances, volume, anchor)
    return [(d.level, np.array(d.centre_ras), result.labels == d.value) for d in result.discs]


def nearest_matches(truth_centres, predicted_centres) -> list[tuple[int | None, float | None]]:
    """For each truth disc (superior first): the index of the predicted disc whose centre is nearest and the
    distance, when it is closer than half the median spacing between truth discs; else (None, None)."""
    truth = np.asarray(truth_centres, float).reshape(-1, 3)
    predicted = np.asarray(predicted_centres, float).reshape(-1, 3)
    steps = np.linalg.norm(np.diff(truth, axis=0), axis=1)
    reach = 0.5 * float(np.median(steps)) if len(steps) else np.inf
    out = []
    for centre in truth:
        distance = np.linalg.norm(predicted - centre, axis=1)
        j = int(np.argmin(distance)) if len(distance) else None
        out.append((j, float(distance[j])) if j is not None and distance[j] < reach else (None, None))
    return out


def evaluate_levels(disc_backend, anchor_backend, info: ds.DatasetInfo, case_ids, batch_size=16, progress=None):
    """Per-source and overall level accuracy and centre error; see the module docstring.

    Returns:
        {"overall": summary, "per_source": {source: summary}, "cases": [per-case rows]}; a summary has "cases",
        "discs", "level_accuracy" (share of truth discs named right), "cases_all_right", "anchor_found" (cases),
        "centre_error_median" and "centre_error_mean" with their "unit" ("mm" or "px").
    """
    missing = [c for c in TRUTH_CLASSES if c not in info.classes]
    if missing:
        from ivdseg.errors import IvdsegError

        raise IvdsegError(f"{info.root} has no {missing[0]!r} class; level truth needs the classes "
                          f"{', '.join(TRUTH_CLASSES)} (see Resources/recipes/ivd-lumbosacral-2d.sh).")
    value = next(c["value"] for c in anchor_backend.card["classes"] if c["name"] == "lumbosacral disc")
    rows = []
    for k, case in enumerate(case_ids):
        data = ds.load_npz(info.root / "cases" / f"{case}.npz")
        spacing = data["pixel_spacing_mm"]
        unit = "mm" if np.all(np.isfinite(spacing)) else "px"
        volume = stack_volume(data["image"], tuple(spacing), float(data["slice_spacing_mm"]))
        truth = _truth(data["label"], stack_volume(data["label"], tuple(spacing), float(data["slice_spacing_mm"])),
                       info)
        disc = segment_volume(volume, disc_backend.predict, disc_backend.card, batch_size, device=disc_backend.device,
                              uncertainty=True)
        anchor = segment_volume(volume, anchor_backend.predict, anchor_backend.card, batch_size,
                                device=anchor_backend.device)
        predicted, _, _ = disc_levels(disc.labelmap, disc_backend.card, anchor.labelmap.array == value,
                                      anchor_backend.card["name"])
        matches = nearest_matches([c for _, c, _ in truth], [d.centre_ras for d in predicted.discs])
        entropy = disc.entropy.array.astype(np.float32)
        right, errors, per_disc = 0, [], []
        for (level, _, truth_mask), (j, distance) in zip(truth, matches):
            if j is not None:
                errors.append(distance)
                right += int(predicted.discs[j].level == level and level is not None)
                mask = predicted.labels == predicted.discs[j].value
                dice = 2.0 * (mask & truth_mask).sum() / max(mask.sum() + truth_mask.sum(), 1)
                per_disc.append({"level": level, "dice": round(float(dice), 4),
                                 "uncertainty": round(float(entropy[mask].mean()), 4)})
        rows.append({"case": case, "source": info.cases[case]["source"], "discs": len(truth), "right": right,
                     "found": len(errors), "errors": errors, "unit": unit, "anchor": predicted.anchor is not None,
                     "per_disc": per_disc})
        if progress:
            progress(k + 1, len(case_ids), "evaluate")
    out = {"per_source": {}, "cases": [{k: v for k, v in r.items() if k != "errors"} for r in rows]}
    for source in sorted({r["source"] for r in rows}):
        out["per_source"][source] = _summary([r for r in rows if r["source"] == source])
    out["overall"] = _summary(rows)
    return out


def _summary(rows) -> dict:
    discs = sum(r["discs"] for r in rows)
    errors = [e for r in rows for e in r["errors"]]
    units = sorted({r["unit"] for r in rows})
    return {"cases": len(rows), "discs": discs,
            "level_accuracy": round(sum(r["right"] for r in rows) / discs, 4) if discs else None,
            "cases_all_right": sum(r["right"] == r["discs"] for r in rows),
            "anchor_found": sum(r["anchor"] for r in rows),
            "discs_found": sum(r["found"] for r in rows),
            "centre_error_median": round(float(np.median(errors)), 2) if errors else None,
            "centre_error_mean": round(float(np.mean(errors)), 2) if errors else None,
            "unit": units[0] if len(units) == 1 else "mixed (mm and px)"}


def choose_review_threshold(per_disc: list[dict], poor_dice=0.8) -> dict:
    """The uncertainty above which a disc is flagged "review", chosen to separate discs segmented poorly (Dice
    below ``poor_dice``) from the others: the cut that maximises sensitivity + specificity - 1 (Youden's J).

    Returns:
        {"threshold", "poor_dice", "discs", "poor", "sensitivity", "specificity"}; threshold None when every disc
        is on one side (nothing to separate).
    """
    u = np.array([d["uncertainty"] for d in per_disc], float)
    poor = np.array([d["dice"] < poor_dice for d in per_disc], bool)
    out = {"threshold": None, "poor_dice": poor_dice, "discs": int(len(u)), "poor": int(poor.sum()),
           "sensitivity": None, "specificity": None}
    if not poor.any() or poor.all():
        return out
    best = (-1.0, None)
    for t in np.unique(u):
        flagged = u > t
        sens = (flagged & poor).sum() / poor.sum()
        spec = (~flagged & ~poor).sum() / (~poor).sum()
        if sens + spec - 1 > best[0]:
            best = (sens + spec - 1, (float(t), float(sens), float(spec)))
    t, sens, spec = best[1]
    return {**out, "threshold": round(t, 4), "sensitivity": round(sens, 3), "specificity": round(spec, 3)}
