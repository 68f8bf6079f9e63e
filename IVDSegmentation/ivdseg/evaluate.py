"""Evaluation of a model on dataset cases at native resolution, per class, per source and per patient."""

from __future__ import annotations

import numpy as np

from . import dataset as ds
from .infer import predict_stack
from .metrics import confusion_counts, dice_from_counts, iou_from_counts


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


def evaluate_cases(model, card: dict, info: ds.DatasetInfo, case_ids, batch_size=16, progress=None) -> dict:
    """Dice and IoU per class of ``model`` on ``case_ids``, at native resolution.

    Predictions are made on the native slices of ``cases/`` (resized to the model's input and back),
    so the figures are those a user gets, not those at the training size.

    Returns:
        {"overall": summary, "per_source": {source: summary}} where a summary has per-class pooled
        "dice" and "iou", "dice_patient_mean" (mean over patients), "mean_dice" (foreground) and "patients".
    """
    n = info.num_classes
    per_source: dict[str, dict[str, np.ndarray]] = {}
    for k, case in enumerate(case_ids):
        data = ds.load_npz(info.root / "cases" / f"{case}.npz")
        pred = predict_stack(model, data["image"], card, batch_size)
        counts = confusion_counts(data["label"], pred, n)
        meta = info.cases[case]
        patients = per_source.setdefault(meta["source"], {})
        patients[meta["patient"]] = patients.get(meta["patient"], 0) + counts
        if progress:
            progress(k + 1, len(case_ids), "evaluate")
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
