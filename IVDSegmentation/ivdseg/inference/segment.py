"""Segmenting a volume: sagittal slices -> batched prediction -> labelmap with the input's geometry.

The sagittal plane comes from the volume's direction matrix, whatever the array order; the labelmap
is written to a temporary name and renamed, with a JSON sidecar naming the classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.data.labels import class_present, labelmap_by_priority
from ivdseg.inference.predict import (is_overlapping, predict_probabilities, prepare_slices, probabilities_to_labels,
                                      resize_mode, with_tta)
from ivdseg.inference.postprocess import apply_card
from ivdseg.io.geometry import Volume, sagittal_slices, stored_mapping
from ivdseg.io.atomic import atomic_write
from ivdseg.io.volumes import write_volume

MAX_OBLIQUITY_DEG = 30.0
MAX_THICK_RATIO = 2.0


@dataclass
class SegmentResult:
    labelmap: Volume
    classes: list[dict]
    slices: int
    seconds: float
    device: str
    volumes_ml: dict = field(default_factory=dict)
    entropy: Volume | None = None  # normalised predictive entropy per voxel, when asked for
    overlapping: bool = False  # the labelmap holds class bits (ivdseg.data.labels): classes may overlap
    mapping: object = None  # the SliceMapping of the slices the network saw (labelmap <-> its slice stack)


def check_sagittal(volume: Volume, source="the volume"):
    """Returns (slices, mapping); raises IvdsegError when the volume cannot give sagittal slices.

    A volume acquired in another plane with thick slices would give sagittal slices blurred along
    one axis, unlike anything the network saw: it is refused rather than resliced badly.
    """
    stack, mapping = sagittal_slices(volume)
    if mapping.obliquity_deg > MAX_OBLIQUITY_DEG:
        raise IvdsegError(f"{source} is {mapping.obliquity_deg:.0f} degrees oblique to the sagittal plane; "
                          "reformat it to sagittal first.")
    row_mm, col_mm = mapping.pixel_spacing_mm
    if max(row_mm, col_mm) > MAX_THICK_RATIO * mapping.slice_spacing_mm and max(row_mm, col_mm) > 2.0:
        raise IvdsegError(f"{source} is not a sagittal acquisition (its sagittal pixels are "
                          f"{row_mm:.1f} x {col_mm:.1f} mm against {mapping.slice_spacing_mm:.1f} mm between "
                          "sagittal planes); give a sagittal series.")
    return stack, mapping


def segment_volume(volume: Volume, predict, card: dict, batch_size=16, progress=None, source="the volume",
                   device="cpu", uncertainty=False) -> SegmentResult:
    """Segments a volume slice by slice.

    Args:
        volume: the input, any orientation whose sagittal plane is near a voxel plane.
        predict: callable (B, S, S, 1) float32 -> (B, S, S, C) probabilities (a backend).
        card: the model card (input size, normalisation, classes).
        batch_size: slices per prediction call.
        progress: called as progress(done_slices, total_slices, "infer").
        uncertainty: also return the per-voxel predictive entropy (``SegmentResult.entropy``).

    Returns:
        SegmentResult with a uint8 labelmap of exactly the input's geometry.
    """
    t0 = time.perf_counter()
    if card.get("slice_plane", "sagittal") == "sagittal":
        stack, mapping = check_sagittal(volume, source)
    else:  # a model of 2D images as stored: the array's own slices
        mapping = stored_mapping(volume)
        stack = mapping.to_stack(volume.array)
    overlapping = is_overlapping(card)
    probs = predict_probabilities(with_tta(predict, card), prepare_slices(stack, card), batch_size, progress)
    labels = probabilities_to_labels(probs, stack.shape[1:], resize_mode(card), entropy=uncertainty,
                                     overlapping=overlapping)
    entropy = None
    if uncertainty:
        labels, per_pixel = labels
        entropy = Volume(mapping.to_volume(per_pixel), volume.ijk_to_ras.copy())
    labels = apply_card(labels, card)
    labelmap = Volume(mapping.to_volume(labels).astype(np.uint8), volume.ijk_to_ras.copy())
    volumes = class_volumes_ml(labelmap, card["classes"], overlapping)
    return SegmentResult(labelmap, card["classes"], len(stack), time.perf_counter() - t0, device, volumes, entropy,
                         overlapping, mapping)


def class_volumes_ml(labelmap: Volume, classes: list[dict], overlapping=False) -> dict:
    """{class name: volume in mL} of a labelmap of class values, or of class bits (bit k = ``classes[k]``)."""
    voxel_ml = float(np.prod(labelmap.spacing_ijk_mm)) / 1000.0
    if overlapping:
        return {c["name"]: round(float(class_present(labelmap.array, k + 1, True).sum()) * voxel_ml, 3)
                for k, c in enumerate(classes)}
    counts = np.bincount(labelmap.array.reshape(-1), minlength=max([c["value"] for c in classes], default=0) + 1)
    return {c["name"]: round(float(counts[c["value"]]) * voxel_ml, 3) for c in classes}


def write_result(result: SegmentResult, output, card: dict, overwrite=False, labelmap: Volume | None = None,
                 classes: list[dict] | None = None, extra: dict | None = None, bits=False) -> Path:
    """Writes the labelmap (.nii/.nii.gz/.nrrd) and a ``<output>.json`` sidecar naming the classes.

    ``labelmap`` and ``classes`` replace the result's (e.g. one label per disc), ``extra`` adds sidecar entries.
    A labelmap holds one class per voxel: where the classes of an overlapping result meet, the card's
    ``label_priority`` (class values, first wins; default class order) decides, and the sidecar says so and still
    gives each class's whole volume (a ``.seg.nrrd`` keeps the overlaps). With ``bits`` an overlapping result is
    written as it is, one bit per class (:mod:`ivdseg.data.labels`), as the Slicer module reads it."""
    output = Path(output)
    labelmap = labelmap if labelmap is not None else result.labelmap
    classes = classes if classes is not None else result.classes
    if result.overlapping and labelmap is result.labelmap and bits:
        extra = {**(extra or {}), "overlapping": True, "label_encoding": "one bit per class: bit k is labels[k]"}
    elif result.overlapping and labelmap is result.labelmap:
        priority = [int(v) for v in card.get("label_priority") or [c["value"] for c in classes]]
        labelmap = Volume(labelmap_by_priority(labelmap.array, len(classes) + 1, priority), labelmap.ijk_to_ras)
        extra = {**(extra or {}), "overlapping": True, "label_priority": priority,
                 "note": "classes may overlap; where they do, this labelmap holds the first class of label_priority"}
    path = write_volume(labelmap, output, overwrite=overwrite)
    sidecar = output.with_name(output.name + ".json")
    from ivdseg.io.atomic import write_json

    volumes = result.volumes_ml if classes is result.classes else class_volumes_ml(labelmap, classes)
    write_json(sidecar, {"model": card["name"], "model_version": card["version"], "labels": classes,
                         "volumes_ml": volumes, **(extra or {})})
    return path


def overlay_png(volume: Volume, labelmap: Volume, classes: list[dict], path, overlapping=False) -> Path:
    """Writes the slice with the most foreground with each class's outline drawn in its colour (8-bit PNG); with
    ``overlapping``, the labelmap holds class bits and each class is outlined on its own."""
    import cv2

    from ivdseg.data.preprocess import normalize_slices

    stack, _ = sagittal_slices(volume)
    labels, _ = sagittal_slices(labelmap)
    fg = labels.reshape(len(labels), -1).sum(1)
    k = int(np.argmax(fg)) if fg.any() else len(stack) // 2
    grey = (normalize_slices(stack[k:k + 1])[0] * 255).astype(np.uint8)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    for n, c in enumerate(classes):
        mask = (class_present(labels[k], n + 1, True) if overlapping else labels[k] == c["value"]).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        colour = tuple(int(255 * v) for v in reversed(c["color"]))  # OpenCV is BGR
        cv2.drawContours(rgb, contours, -1, colour, 1)
    def write(temp):
        ok, encoded = cv2.imencode(".png", rgb)
        if not ok:
            raise IvdsegError(f"Cannot encode the overlay {path}.")
        Path(temp).write_bytes(encoded.tobytes())

    return atomic_write(Path(path), write, overwrite=True)


def summary_text(result: SegmentResult) -> str:
    vols = ", ".join(f"{name} {ml:.2f} mL" for name, ml in result.volumes_ml.items())
    return f"{result.slices} slices in {result.seconds:.1f} s on the {result.device.upper()}; {vols}."


def rle_table_rows(result: SegmentResult, slice_ids: list[str], card: dict) -> list[tuple[str, str, str]]:
    """The result as rows of an RLE mask table (:mod:`ivdseg.data.rle`, the UW-Madison layout): one row per slice the
    network saw and per class, in slice order, an empty RLE where the class is absent. Class names are those the
    training table used (the card's ``rle_class_names``), else the card's own, and its pixel order (``rle_order``)."""
    from ivdseg.data.rle import rle_rows

    stack = result.mapping.to_stack(result.labelmap.array)
    if len(slice_ids) != len(stack):
        raise ValueError(f"{len(slice_ids)} slice ids for {len(stack)} slices")
    names = card.get("rle_class_names") or {}
    order = card.get("rle_order", "row-major")
    rows = []
    for sid, labels in zip(slice_ids, stack):
        rows += rle_rows(sid, {names.get(c["name"], c["name"]): class_present(labels, k + 1, True) if result.overlapping
                               else labels == c["value"] for k, c in enumerate(result.classes)}, order)
    return rows
