"""How far the disc table of a model lies from the same table made from the manual labels.

The discs of the manual labels (instances of the dataset's "intervertebral disc" class) and of the model's labelmap
are measured by :func:`ivdseg.inference.measure.measure_discs` on the same image, each with its own vertebrae and
canal (the manual ones where the dataset labels them). Each manual disc is matched to the predicted disc whose centre
is nearest, closer than half the median spacing between manual discs. Per source and measurement: the bias (mean of
model minus manual), the Bland-Altman 95 % limits of agreement (bias +- 1.96 sd of the differences), the mean
absolute difference, and the manual values' own mean and spread: an agreement means something only when it is
small against how much discs differ from one another. The signal ratio is compared only where both tables divide by
the same reference (canal or vertebral body). Lengths are in mm where the case keeps its spacing, else in pixels.
"""

from __future__ import annotations

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.errors import IvdsegError
from ivdseg.eval.levels import nearest_matches
from ivdseg.inference.levels import name_levels, split_instances
from ivdseg.inference.measure import measure_discs
from ivdseg.inference.segment import segment_volume
from ivdseg.io.geometry import Volume, stack_volume

DISC = "intervertebral disc"
MEASURES = ("middle_height_mm", "ap_depth_mm", "disc_height_index", "signal_ratio")
LENGTHS = ("middle_height_mm", "ap_depth_mm")  # in pixels where the spacing is unknown


def table_of(labelmap: Volume, image: Volume, classes: list[dict]) -> list[tuple[np.ndarray, object]]:
    """(centre RAS, DiscMeasurement) of each disc of a labelmap whose class values ``classes`` name."""
    value = next(c["value"] for c in classes if c["name"] == DISC)
    instances, n = split_instances(labelmap.array == value, labelmap)
    if not n:
        return []
    levels = name_levels(instances, labelmap)
    rows = measure_discs(image, levels, labelmap, classes)
    return [(np.asarray(d.centre_ras, float), row) for d, row in zip(levels.discs, rows)]


def matched_pairs(manual: list, model: list) -> list[tuple[object, object]]:
    """(manual row, model row) for each manual disc with a predicted disc nearer than half the manual spacing (the
    matching of ``evaluate-levels``)."""
    matches = nearest_matches([c for c, _ in manual], [c for c, _ in model])
    return [(row, model[j][1]) for (_, row), (j, _) in zip(manual, matches) if j is not None]


def differences(pairs) -> dict[str, list[tuple[float, float]]]:
    """(model, manual) value pairs of each measurement that both tables have."""
    out = {m: [] for m in MEASURES}
    for manual, model in pairs:
        for m in MEASURES:
            a, b = getattr(model, m), getattr(manual, m)
            if a is None or b is None or (m == "signal_ratio" and model.signal_reference != manual.signal_reference):
                continue
            out[m].append((float(a), float(b)))
    return out


def agreement(values: list[tuple[float, float]]) -> dict:
    """Bias, limits of agreement, mean absolute difference and the manual mean / sd of (model, manual) pairs."""
    if not values:
        return {"n": 0, "bias": None, "limits": None, "mean_abs_difference": None, "manual_mean": None,
                "manual_sd": None}
    model, manual = np.array(values, float).T
    d = model - manual
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    bias = float(d.mean())
    return {"n": len(d), "bias": round(bias, 4), "limits": [round(bias - 1.96 * sd, 4), round(bias + 1.96 * sd, 4)],
            "mean_abs_difference": round(float(np.abs(d).mean()), 4), "manual_mean": round(float(manual.mean()), 4),
            "manual_sd": round(float(np.std(manual, ddof=1)), 4) if len(manual) > 1 else None}


def measurement_agreement(backend, info: ds.DatasetInfo, case_ids, batch_size=16, progress=None) -> dict:
    """Per-source agreement of the model's disc table with the manual one; see the module docstring.

    Returns:
        {"per_source": {source: summary}, "overall": summary of the unitless measurements, "cases": [rows]}; a
        summary has "cases", "discs" (manual), "matched", "unit" of the lengths and "measures" ({name: agreement}).

    Raises:
        IvdsegError: the dataset or the model has no "intervertebral disc" class.
    """
    for what, names in (("dataset " + str(info.root), info.classes), ("model " + backend.card["name"],
                                                                     [c["name"] for c in backend.card["classes"]])):
        if DISC not in names:
            raise IvdsegError(f"The {what} has no {DISC!r} class; the disc table measures discs.")
    manual_classes = [{"name": name, "value": value} for value, name in enumerate(info.classes) if value]
    rows = []
    for k, case in enumerate(case_ids):
        data = ds.load_npz(info.root / "cases" / f"{case}.npz")
        spacing, between = tuple(data["pixel_spacing_mm"]), float(data["slice_spacing_mm"])
        image = stack_volume(data["image"], spacing, between)
        manual = table_of(stack_volume(data["label"], spacing, between), image, manual_classes)
        result = segment_volume(image, backend.predict, backend.card, batch_size, device=backend.device)
        pairs = matched_pairs(manual, table_of(result.labelmap, image, backend.card["classes"]))
        rows.append({"case": case, "source": info.cases[case]["source"], "discs": len(manual), "matched": len(pairs),
                     "unit": "mm" if np.all(np.isfinite(spacing)) else "px", "values": differences(pairs)})
        if progress:
            progress(k + 1, len(case_ids), "evaluate")
    out = {"per_source": {s: _summary([r for r in rows if r["source"] == s]) for s in sorted({r["source"]
                                                                                            for r in rows})}}
    out["overall"] = _summary(rows)
    out["cases"] = [{key: v for key, v in r.items() if key != "values"} for r in rows]
    return out


def _summary(rows) -> dict:
    units = sorted({r["unit"] for r in rows})
    unit = units[0] if len(units) == 1 else None
    measures = {m: agreement([v for r in rows for v in r["values"][m]]) for m in MEASURES
                if unit is not None or m not in LENGTHS}  # lengths in mm and in px do not pool
    return {"cases": len(rows), "discs": sum(r["discs"] for r in rows), "matched": sum(r["matched"] for r in rows),
            "unit": unit or "mixed (mm and px)", "measures": measures}
