"""Evaluation of a model on dataset cases at native resolution, per class, per source and per patient.

Beside Dice and IoU (pooled over voxels), every summary carries the UW-Madison GI tract challenge score
(:func:`ivdseg.eval.metrics.uw_madison_case`): 0.4 x the 2D Dice averaged over (slice, class) pairs + 0.6 x (1 - the
3D Hausdorff distance of each case and class divided by the diagonal of the case's slice stack, averaged over
(case, class) pairs). A case is one series, its (N, H, W) stack; classes its source does not label are left out.

Distances are in mm where the case's ``pixel_spacing_mm`` is known: slices lie ``slice_spacing_mm`` apart, or, where
that is unknown, one mean pixel spacing apart (the challenge's "slice depth 1" in pixel units, so an unknown slice
spacing reproduces the challenge's figure exactly when pixels are square). Without a known pixel spacing every
axis is counted in voxels (a known slice spacing alone is then ignored: mm and pixels do not mix).
"""

from __future__ import annotations

import math
import zipfile

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.inference.predict import predict_stack
from ivdseg.eval.metrics import (class_counts, dice_from_counts, iou_from_counts, uw_madison_case,
                                 uw_madison_score, volume_ratio_from_counts)
from ivdseg.inference.postprocess import apply_card

SPACING_KINDS = ("mm", "mm_in_plane", "voxels")  # how a case's distances were measured (see the module docstring)


def stack_spacing(pixel_spacing_mm=None, slice_spacing_mm=None) -> tuple[tuple[float, float, float], str]:
    """The (slice, row, column) step of a case's stack for its 3D distances, and which of :data:`SPACING_KINDS` it is.

    Args:
        pixel_spacing_mm: (row, column) in mm, NaN or None where unknown.
        slice_spacing_mm: mm between slices, NaN or None where unknown.
    """
    def known(v):
        return v is not None and math.isfinite(float(v)) and float(v) > 0

    pixel = list(np.ravel(pixel_spacing_mm)) if pixel_spacing_mm is not None else []
    if len(pixel) != 2 or not all(known(v) for v in pixel):
        return (1.0, 1.0, 1.0), "voxels"
    row, col = float(pixel[0]), float(pixel[1])
    if known(slice_spacing_mm):
        return (float(slice_spacing_mm), row, col), "mm"
    return ((row + col) / 2, row, col), "mm_in_plane"


def case_spacing(info: ds.DatasetInfo, case: str) -> tuple[tuple[float, float, float], str]:
    """:func:`stack_spacing` of the spacing stored in ``cases/<case>.npz`` (only those small members are read);
    voxels when the file or its spacing is missing."""
    try:
        with np.load(info.root / "cases" / f"{case}.npz", allow_pickle=False) as data:
            pixel = data["pixel_spacing_mm"] if "pixel_spacing_mm" in data.files else None
            step = float(data["slice_spacing_mm"]) if "slice_spacing_mm" in data.files else None
    except (OSError, ValueError, zipfile.BadZipFile):
        return (1.0, 1.0, 1.0), "voxels"
    return stack_spacing(pixel, step)


class _UwTally:
    """Additive sums of the challenge's terms per class: rows = class values, columns = sum of slice Dice, slices,
    sum of normalised Hausdorff distances, cases; plus how many cases each spacing kind measured."""

    def __init__(self, num_classes: int):
        self.sums = np.zeros((num_classes, 4), np.float64)
        self.spacing = dict.fromkeys(SPACING_KINDS, 0)

    def add_case(self, terms: dict, spacing_kind: str) -> None:
        for c, (dice, hd) in terms.items():
            self.sums[c] += (float(dice.sum()), len(dice), hd, 1)
        self.spacing[spacing_kind] += 1

    def __iadd__(self, other: "_UwTally") -> "_UwTally":
        self.sums += other.sums
        for k, v in other.spacing.items():
            self.spacing[k] += v
        return self

    def summary(self, class_names: list[str]) -> dict:
        """{"score", "dice_2d", "hausdorff_norm", "cases", "spacing", "per_class": {name: {...} or None}}; a class
        never scored (no case labels it) is None, and so are the figures when nothing was scored."""

        def figures(dice_sum, slices, hd_sum, cases):
            if not cases or not slices:
                return None
            dice, hd = dice_sum / slices, hd_sum / cases
            return {"score": round(uw_madison_score(dice, hd), 4), "dice_2d": round(dice, 4),
                    "hausdorff_norm": round(hd, 4)}

        fg = self.sums[1:]
        overall = figures(*fg.sum(axis=0)) or {"score": None, "dice_2d": None, "hausdorff_norm": None}
        return {**overall, "cases": sum(self.spacing.values()), "spacing": dict(self.spacing),
                "per_class": {name: figures(*self.sums[c]) for c, name in enumerate(class_names) if c}}


def _summary(counts: np.ndarray, per_patient: list[np.ndarray], class_names: list[str],
             uw: _UwTally | None = None) -> dict:
    dice = dice_from_counts(counts)
    iou = iou_from_counts(counts)
    ratio = volume_ratio_from_counts(counts)
    out = {"dice": {}, "iou": {}, "volume_ratio": {}, "dice_patient_mean": {}, "patients": len(per_patient)}
    pat = np.array([dice_from_counts(c) for c in per_patient]) if per_patient else np.zeros((0, len(class_names)))
    for c, name in enumerate(class_names):
        if c == 0:
            continue
        out["dice"][name] = None if np.isnan(dice[c]) else round(float(dice[c]), 4)
        out["iou"][name] = None if np.isnan(iou[c]) else round(float(iou[c]), 4)
        out["volume_ratio"][name] = None if np.isnan(ratio[c]) else round(float(ratio[c]), 3)
        vals = pat[:, c][~np.isnan(pat[:, c])] if len(pat) else []
        out["dice_patient_mean"][name] = round(float(np.mean(vals)), 4) if len(vals) else None
    fg = [v for v in out["dice"].values() if v is not None]
    out["mean_dice"] = round(float(np.mean(fg)), 4) if fg else None
    if uw is not None:
        out["uw_madison"] = uw.summary(class_names)
    return out


def predict_cases(model, card: dict, info: ds.DatasetInfo, case_ids, batch_size=16, progress=None):
    """[(case id, truth (N, H, W), raw prediction (N, H, W))] at native resolution, before post-processing."""
    out = []
    for k, case in enumerate(case_ids):
        data = ds.load_npz(info.root / "cases" / f"{case}.npz")
        out.append((case, data["label"], predict_stack(model, data["image"], card, batch_size)))
        if progress:
            progress(k + 1, len(case_ids), "evaluate")
    return out


def score_predictions(predictions, info: ds.DatasetInfo, card: dict | None = None, uw_metric: bool = True) -> dict:
    """Dice, IoU and the UW-Madison score of :func:`predict_cases` output, with the card's post-processing when a
    card is given.

    Labels are read in the dataset's encoding (``info.overlapping``): for overlapping classes each class is
    scored on its own bit mask, so a pixel of two classes counts for both, and the card's small-component removal
    is applied per class, clearing only that class's bit (:func:`ivdseg.inference.postprocess.apply_card`).
    A class that a case's source does not label is not scored on that case (its Dice there is unknown, not 0):
    a source that lacks it reports None for it.

    Args:
        predictions: [(case id, truth (N, H, W), prediction (N, H, W))], in the dataset's label encoding.
        info: the dataset the cases belong to (classes, encoding, sources, patients; spacing from ``cases/``).
        card: the model card whose post-processing to apply, or None for the raw predictions.
        uw_metric: also compute the UW-Madison score (``"uw_madison"`` in each summary); choices that only
            compare mean Dice (post-processing, TTA) leave it out to save the distance transforms.
    """
    n = info.num_classes
    if card is not None:
        card = {**card, "overlapping": info.overlapping}  # the dataset's encoding decides how labels are cleaned
    per_source: dict[str, dict[str, np.ndarray]] = {}
    uw_per_source: dict[str, _UwTally] = {}
    for case, truth, pred in predictions:
        if card is not None:
            pred = apply_card(pred, card)
        labelled = info.labelled_classes(case)
        known = np.zeros(n, bool)
        known[[0, *labelled]] = True
        # a class its source lacks: not scored there
        counts = class_counts(truth, pred, n, info.overlapping) * known[:, None]
        meta = info.cases[case]
        patients = per_source.setdefault(meta["source"], {})
        patients[meta["patient"]] = patients.get(meta["patient"], 0) + counts
        if uw_metric:
            spacing, kind = case_spacing(info, case)
            terms = uw_madison_case(truth, pred, n, info.overlapping, spacing, classes=labelled)
            uw_per_source.setdefault(meta["source"], _UwTally(n)).add_case(terms, kind)
    result = {"per_source": {}}
    total = np.zeros((n, 3), np.int64)
    uw_total = _UwTally(n) if uw_metric else None
    all_patients = []
    for source, patients in sorted(per_source.items()):
        pooled = sum(patients.values())
        total += pooled
        all_patients += list(patients.values())
        if uw_metric:
            uw_total += uw_per_source[source]
        result["per_source"][source] = _summary(pooled, list(patients.values()), info.classes,
                                                uw_per_source.get(source))
    result["overall"] = _summary(total, all_patients, info.classes, uw_total)
    return result


def evaluate_cases(model, card: dict, info: ds.DatasetInfo, case_ids, batch_size=16, progress=None,
                   postprocess=True) -> dict:
    """Dice and IoU per class of ``model`` on ``case_ids``, at native resolution.

    Predictions are made on the native slices of ``cases/`` (resized to the model's input and back),
    so the figures are those a user gets, not those at the training size; the card's post-processing
    is applied unless ``postprocess`` is False.

    Returns:
        {"overall": summary, "per_source": {source: summary}} where a summary has per-class pooled
        "dice", "iou" and "volume_ratio" (predicted / true voxels), "dice_patient_mean" (mean over patients),
        "mean_dice" (foreground), "patients" and "uw_madison" (:meth:`_UwTally.summary`: "score", "dice_2d",
        "hausdorff_norm", "cases", "spacing", "per_class").
    """
    predictions = predict_cases(model, card, info, case_ids, batch_size, progress)
    return score_predictions(predictions, info, card if postprocess else None)


def choose_postprocessing(predictions, info: ds.DatasetInfo, card: dict, fractions=(0.02, 0.05, 0.1, 0.2),
                          min_gain=0.002) -> dict:
    """The card's "postprocessing" entry: small-component removal, enabled only if it raises validation Dice.

    Every fraction is scored on the same predictions; the best is kept when it beats no post-processing
    by at least ``min_gain`` in mean foreground Dice (both figures are recorded in the entry).
    """
    plain = score_predictions(predictions, info, None, uw_metric=False)["overall"]["mean_dice"] or 0.0
    best_fraction, best = 0.0, plain
    for f in fractions:
        trial = {**card, "postprocessing": {"enabled": True, "min_component_fraction": f}}
        dice = score_predictions(predictions, info, trial, uw_metric=False)["overall"]["mean_dice"] or 0.0
        if dice > best:
            best_fraction, best = f, dice
    enabled = best_fraction > 0 and best - plain >= min_gain
    return {"enabled": enabled, "min_component_fraction": best_fraction if enabled else 0.0,
            "method": "drop 3D components smaller than this fraction of the class's largest",
            "val_mean_dice_without": round(plain, 4), "val_mean_dice_with": round(best, 4) if enabled else None}


def choose_tta(model, card: dict, info: ds.DatasetInfo, val_cases, batch_size=16, scales=None, min_gain=0.002,
               progress=None) -> dict:
    """The card's "tta" entry: test-time augmentation over in-plane scales, enabled only if it raises validation
    Dice by at least ``min_gain``; records both figures and what it costs in prediction time."""
    import time

    from ivdseg.inference.predict import TTA_SCALES

    scales = list(scales or TTA_SCALES)
    figures = {}
    for enabled in (False, True):
        trial = {**card, "tta": {"enabled": enabled, "scales": scales}}
        t0 = time.perf_counter()
        predictions = predict_cases(model, trial, info, val_cases, batch_size, progress)
        figures[enabled] = (score_predictions(predictions, info, card, uw_metric=False)["overall"]["mean_dice"]
                            or 0.0,
                            time.perf_counter() - t0)
    (plain, t_plain), (augmented, t_tta) = figures[False], figures[True]
    return {"enabled": augmented - plain >= min_gain, "scales": scales, "val_mean_dice_without": round(plain, 4),
            "val_mean_dice_with": round(augmented, 4), "time_ratio": round(t_tta / max(t_plain, 1e-9), 2),
            "method": "probabilities averaged over the slice zoomed about its centre by each scale"}
