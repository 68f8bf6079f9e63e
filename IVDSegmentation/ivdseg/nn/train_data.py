"""What training reads and scores besides the network: the inputs of a split (with neighbouring-slice context),
the validation Dice of either label encoding, and the warnings about classes a source does not label."""

from __future__ import annotations

import warnings

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.data.preprocess import normalize_slices
from ivdseg.errors import IvdsegWarning


def load_inputs(info, case_ids, size: int, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs (N, S, S, 2 x context + 1) float32, normalised per slice, and labels (N, S, S) of
    ``case_ids`` in :func:`ivdseg.data.dataset.load_resized`'s order; each slice's neighbours come from its own
    series (edges repeat the end slice), never from the series next to it in the list."""
    from ivdseg.data.preprocess import with_context

    images, labels = [], []
    for case in case_ids:
        x, y = ds.load_resized(info, [case], size)
        images.append(with_context(normalize_slices(x), context))
        labels.append(y)
    if not images:
        return np.zeros((0, size, size, 2 * context + 1), np.float32), np.zeros((0, size, size), np.uint8)
    return np.concatenate(images), np.concatenate(labels)


def validation_dice(prob: np.ndarray, truth: np.ndarray, known: np.ndarray, overlapping: bool) -> np.ndarray:
    """(C,) Dice per class of probabilities (N, S, S, C) against labels (N, S, S) where ``known`` (N, C) says the
    slice's source labels the class: argmax for exclusive classes, each class above 0.5 for overlapping ones
    (NaN for a class neither side shows)."""
    from ivdseg.data.labels import class_present
    from ivdseg.eval.metrics import dice_from_counts, known_counts

    num_classes = prob.shape[-1]
    if not overlapping:
        return dice_from_counts(known_counts(truth, np.argmax(prob, -1), num_classes, known))
    dice = np.full(num_classes, np.nan)
    for c in range(1, num_classes):
        rows = known[:, c]
        t = class_present(truth[rows], c, True)
        p = prob[rows][..., c] > 0.5
        denom = int(t.sum()) + int(p.sum())
        dice[c] = 2.0 * int((t & p).sum()) / denom if denom else np.nan
    return dice


def say_unlabelled(info, train_cases, known, labels) -> None:
    """Says once which sources lack which classes (masked out of the loss there), and which class no training
    slice shows at all (the network cannot learn it from this split)."""
    missing: dict[str, set] = {}
    unannotated: dict[str, int] = {}
    for case in train_cases:
        labelled = info.labelled_classes(case)
        source = info.cases[case]["source"]
        if not labelled:  # listed as unannotated in the export spec, not a source that lacks the classes
            unannotated[source] = unannotated.get(source, 0) + int(info.cases[case]["n_slices"])
            continue
        lacks = set(range(1, info.num_classes)) - set(labelled)
        if lacks:
            missing.setdefault(source, set()).update(lacks)
    for source, lacks in sorted(missing.items()):
        names = ", ".join(repr(info.classes[c]) for c in sorted(lacks))
        warnings.warn(IvdsegWarning(f"Source {source!r} does not label {names}: on its slices those classes are left out of "
                         "the loss (never taught as background)."))
    for source, n in sorted(unannotated.items()):
        warnings.warn(IvdsegWarning(f"{n} training slice(s) of source {source!r} are unannotated (export spec): they "
                                    "add nothing to the loss."))
    from ivdseg.data.labels import class_present

    seen = np.zeros(info.num_classes, bool)
    for c in range(1, info.num_classes):
        seen[c] = bool(np.any(class_present(labels[known[:, c]], c, info.overlapping))) if known[:, c].any() else False
    for c in np.flatnonzero(~seen[1:]) + 1:
        warnings.warn(IvdsegWarning(f"No training slice of this split shows {info.classes[c]!r}; the network cannot learn it "
                         "here, and its Dice will be low or missing."))


def say_context_gaps(info, context: int) -> None:
    """With neighbouring-slice context, says once when some series' slices are not all neighbours (slices dropped
    by --drop-unlabelled, numbers missing from a series): there the network sees as neighbours slices that are not,
    while inference always sees whole series."""
    if context <= 0:
        return
    dropped = sum(int(s.get("dropped_unlabelled_slices") or 0) for s in info.sources.values())
    gaps = sum(1 for meta in info.cases.values() if meta.get("missing_slices"))
    if dropped or gaps:
        what = " and ".join(p for p in (f"{dropped} slices were dropped by --drop-unlabelled" if dropped else "",
                                        f"{gaps} series miss slice numbers" if gaps else "") if p)
        warnings.warn(IvdsegWarning(f"--context-slices {context}: {what}, so some neighbours the network sees during "
                                    "training are not neighbours; export without --drop-unlabelled for 2.5D."))
