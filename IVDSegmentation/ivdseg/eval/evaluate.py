"""Evaluation of a model on dataset cases at native resolution, per class, per source and per patient."""

from __future__ import annotations

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.inference.predict import predict_stack
from ivdseg.eval.metrics import confusion_counts, dice_from_counts, iou_from_counts
from ivdseg.inference.postprocess import apply_card


def _summary(counts: np.ndarray, per_patient: list[np.ndarray], class_names: list[str]) -> dict:
    dice = dice_from_counts(counts)
    iou = iou_from_counts(counts)
    out = {"dice": {}, "iou": {}, "dice_patient_mean": {}, "patients": len(per_patient)}
    pat = np.array([dice_from_counts(c) for c in per_patient]) if per_patient else np.zeros((0, len(class_names)))
    for c, name in enumerate(class_names):
        if c == 0:
            continue
        out["dice"][name] = None if np.isnan(dice[c]) else round(float(dice[c]), 4)
        out["iou"][name] = None if np.isnan(iou[c]) else round(float(iou[c]), 4)
        vals = pat[:, c][~np.isnan(pat[:, c])] if len(pat) else []
        out["dice_patient_mean"][name] = round(float(np.mean(vals)), 4) if len(vals) else None
    fg = [v for v in out["dice"].values() if v is not None]
    out["mean_dice"] = round(float(np.mean(fg)), 4) if fg else None
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


def score_predictions(predictions, info: ds.DatasetInfo, card: dict | None = None) -> dict:
    """Dice and IoU of :func:`predict_cases` output, with the card's post-processing when a card is given.

    A class that a case's source does not label is not scored on that case (its Dice there is unknown, not 0):
    a source that lacks it reports None for it."""
    n = info.num_classes
    per_source: dict[str, dict[str, np.ndarray]] = {}
    for case, truth, pred in predictions:
        if card is not None:
            pred = apply_card(pred, card)
        known = np.zeros(n, bool)
        known[[0, *info.labelled_classes(case)]] = True
        counts = confusion_counts(truth, pred, n) * known[:, None]  # a class its source lacks: not scored there
        meta = info.cases[case]
        patients = per_source.setdefault(meta["source"], {})
        patients[meta["patient"]] = patients.get(meta["patient"], 0) + counts
    result = {"per_source": {}}
    total = np.zeros((n, 3), np.int64)
    all_patients = []
    for source, patients in sorted(per_source.items()):
        pooled = sum(patients.values())
        total += pooled
        all_patients += list(patients.values())
        result["per_source"][source] = _summary(pooled, list(patients.values()), info.classes)
    result["overall"] = _summary(total, all_patients, info.classes)
    return result


def evaluate_cases(model, card: dict, info: ds.DatasetInfo, case_ids, batch_size=16, progress=None,
                   postprocess=True) -> dict:
    """Dice and IoU per class of ``model`` on ``case_ids``, at native resolution.

    Predictions are made on the native slices of ``cases/`` (resized to the model's input and back),
    so the figures are those a user gets, not those at the training size; the card's post-processing
    is applied unless ``postprocess`` is False.

    Returns:
        {"overall": summary, "per_source": {source: summary}} where a summary has per-class pooled
        "dice" and "iou", "dice_patient_mean" (mean over patients), "mean_dice" (foreground) and "patients".
    """
    predictions = predict_cases(model, card, info, case_ids, batch_size, progress)
    return score_predictions(predictions, info, card if postprocess else None)


def choose_postprocessing(predictions, info: ds.DatasetInfo, card: dict, fractions=(0.02, 0.05, 0.1, 0.2),
                          min_gain=0.002) -> dict:
    """The card's "postprocessing" entry: small-component removal, enabled only if it raises validation Dice.

    Every fraction is scored on the same predictions; the best is kept when it beats no post-processing
    by at least ``min_gain`` in mean foreground Dice (both figures are recorded in the entry).
    """
    plain = score_predictions(predictions, info, None)["overall"]["mean_dice"] or 0.0
    best_fraction, best = 0.0, plain
    for f in fractions:
        trial = {**card, "postprocessing": {"enabled": True, "min_component_fraction": f}}
        dice = score_predictions(predictions, info, trial)["overall"]["mean_dice"] or 0.0
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
        figures[enabled] = (score_predictions(predictions, info, card)["overall"]["mean_dice"] or 0.0,
                            time.perf_counter() - t0)
    (plain, t_plain), (augmented, t_tta) = figures[False], figures[True]
    return {"enabled": augmented - plain >= min_gain, "scales": scales, "val_mean_dice_without": round(plain, 4),
            "val_mean_dice_with": round(augmented, 4), "time_ratio": round(t_tta / max(t_plain, 1e-9), 2),
            "method": "probabilities averaged over the slice zoomed about its centre by each scale"}
