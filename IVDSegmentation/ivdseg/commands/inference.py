"""The commands that run a model: ``ivdseg segment``, ``demo`` and ``series`` (the argument checks come first)."""

from __future__ import annotations

import os
from pathlib import Path

from ivdseg.errors import IvdsegError


def check_batch_size(a):
    if a.batch_size < 1:
        raise IvdsegError(f"--batch-size must be at least 1, got {a.batch_size}.")


def check_folder_of(path: Path, option: str):
    if not path.parent.is_dir():
        raise IvdsegError(f"{option} {path}: the folder {path.parent} does not exist; create it first.")


def _open_backend(a, reporter):
    import dataclasses

    from ivdseg.inference.backends import cached_backend
    from ivdseg.models.package import resolve_model

    backend = cached_backend(resolve_model(a.model), a.backend, a.device)
    if getattr(a, "no_tta", False) and (backend.card.get("tta") or {}).get("enabled"):
        backend = dataclasses.replace(backend, card={**backend.card, "tta": {**backend.card["tta"], "enabled": False}})
    reporter.message(f"Model {backend.card['name']} {backend.card['version']} on the {backend.device.upper()} "
                     f"({backend.name}).")
    return backend


def _check_output(path: Path, overwrite: bool, source: Path | None = None):
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".nrrd", ".dcm")):
        raise IvdsegError(f"{path}: the output must end in .nii.gz, .nii, .nrrd, .seg.nrrd or .dcm (DICOM SEG).")
    if name.endswith(".dcm") and source is not None and not _is_dicom_input(source):
        raise IvdsegError(f"{path}: a DICOM SEG references its source series, but {source} is not DICOM; write a "
                          ".seg.nrrd or a labelmap instead.")
    if not path.parent.is_dir():
        raise IvdsegError(f"Cannot write {path}: folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK):
        raise IvdsegError(f"Cannot write {path}: folder {path.parent} is not writable.")
    if path.exists() and not overwrite:
        raise IvdsegError(f"{path} already exists; pass --overwrite to replace it.")


def _wants_levels(a) -> bool:
    return bool(getattr(a, "levels", False) or getattr(a, "points", None) or getattr(a, "table", None))


def _is_dicom_input(path: Path) -> bool:
    """A DICOM folder or file (what read_volume reads as a DICOM series)."""
    return path.is_dir() or path.suffix.lower() in (".dcm", "") and not path.name.lower().endswith((".nii", ".nrrd"))


def _segment_to_files(a, reporter, volume, source, output, overlay=None, overwrite=False):
    """Runs the model on ``volume`` and writes ``output`` (labelmap + .json, or .seg.nrrd) and the overlay; with
    levels, one label per disc, and the points and the table when asked for. ``source`` is the input's path, or
    the files of a DICOM series (for a DICOM SEG's references)."""
    from ivdseg.inference.segment import overlay_png, segment_volume, write_result

    backend = _open_backend(a, reporter)
    levels = _wants_levels(a)
    if levels:
        from ivdseg.inference.instances import instance_rules
        from ivdseg.inference.levels import level_support

        if not instance_rules(backend.card):
            raise IvdsegError(f"The model {backend.card['name']} {backend.card['version']} names no instances (its "
                              "card has no spine-levels or left / right class); run without --levels, --points and "
                              "--table, or choose a model that has one.")
        if (a.points or a.table) and level_support(backend.card) is None:
            raise IvdsegError(f"--points and --table need disc levels, which the model {backend.card['name']} "
                              f"{backend.card['version']} does not name.")
    result = segment_volume(volume, backend.predict, backend.card, a.batch_size, a.stop.guard(reporter.progress),
                            source=source if isinstance(source, str) else str(Path(source[0]).parent),
                            device=backend.device, uncertainty=bool(getattr(a, "table", None)))
    a.stop.check()  # a request that came with the last batch: nothing is written
    labelmap, classes, extra, later = result.labelmap, result.classes, {}, []
    if levels:
        labelmap, classes, extra, later = _levels(a, volume, result, backend.card, overwrite)
    if output.name.lower().endswith(".dcm"):
        from ivdseg.io.dicomseg import write_dicom_seg

        write_dicom_seg(labelmap, classes, Path(source) if isinstance(source, str) else source, output,
                        backend.card["name"], backend.card["version"],
                        series_uid=getattr(a, "series", None), overwrite=overwrite,
                        overlapping=labelmap is result.labelmap and result.overlapping)
    elif output.name.lower().endswith(".seg.nrrd"):
        from ivdseg.io.segnrrd import write_seg_nrrd

        write_seg_nrrd(labelmap, classes, output, overwrite=overwrite,
                       algorithm_name=f"{backend.card['name']} {backend.card['version']}",
                       overlapping=labelmap is result.labelmap and result.overlapping)
    else:
        write_result(result, output, backend.card, overwrite=overwrite, labelmap=labelmap, classes=classes,
                     extra=extra, bits=bool(getattr(a, "label_bits", False)))
    for write in later:  # the points and the table, once the main output stands
        write()
    if overlay:
        overlay_png(volume, labelmap, classes, overlay, overlapping=labelmap is result.labelmap and result.overlapping)
    return result


def _anchor_mask(a, volume, card):
    """(lumbosacral-disc mask, model name) from the anchor model the card names, or (None, "") without one."""
    from ivdseg.inference.backends import cached_backend
    from ivdseg.inference.levels import level_support
    from ivdseg.inference.segment import segment_volume
    from ivdseg.models.package import resolve_model

    support = level_support(card)
    rule = support[1] if support else {}
    if not rule.get("anchor_model"):
        return None, ""
    try:
        package = resolve_model(rule["anchor_model"])
    except IvdsegError:
        raise IvdsegError(f"The model {card['name']} names its levels from the anchor model "
                          f"{rule['anchor_model']!r}, which is not installed; reinstall the bundled models.") from None
    backend = cached_backend(package, a.backend, a.device)
    value = next((c["value"] for c in backend.card["classes"] if c["name"] == "lumbosacral disc"), None)
    if value is None:
        raise IvdsegError(f"The anchor model {rule['anchor_model']!r} has no 'lumbosacral disc' class.")
    anchor = segment_volume(volume, backend.predict, backend.card, a.batch_size, device=backend.device)
    a.stop.check()
    return anchor.labelmap.array == value, f"{backend.card['name']} {backend.card['version']}"


def _levels(a, volume, result, card, overwrite):
    """Disc instances and levels: (labelmap, classes, sidecar entries, the writers of --points and --table, to run
    once the main output is written)."""
    import warnings

    from ivdseg.errors import IvdsegWarning
    from ivdseg.inference.instances import named_instances

    anchor_mask, anchor_name = _anchor_mask(a, volume, card)
    levels, labelmap, classes, notes = named_instances(result.labelmap, card, anchor_mask, anchor_name)
    for note in notes:
        warnings.warn(IvdsegWarning(note))
    if levels is None:
        return labelmap, classes, {}, []
    later = []
    if a.points:
        from ivdseg.io.markups import Point, write_points

        points = [Point(d.level or f"disc {d.value}", d.centre_ras, f"{d.name} centre") for d in levels.discs]
        later.append(lambda: write_points(a.points, points, name="Disc centres", overwrite=overwrite))
    if a.table:
        from ivdseg.inference.levels import level_support
        from ivdseg.inference.measure import measure_discs, write_table

        rows = measure_discs(volume, levels, result.labelmap, card["classes"], result.entropy,
                             level_support(card)[1].get("review_threshold"))
        later.append(lambda: write_table(a.table, rows, overwrite=overwrite))
    summary = {"anchor": levels.anchor, "uncertain": levels.uncertain, "missing": levels.missing,
               "note": levels.note, "discs": len(levels.discs)}
    return labelmap, classes, {"levels": summary}, later


def _report_done(reporter, result, **fields):
    from ivdseg.inference.segment import summary_text

    reporter.emit("done", **fields, slices=result.slices, seconds=round(result.seconds, 2), device=result.device,
                  volumes_ml=result.volumes_ml)
    if reporter.mode == "text":
        reporter.message(summary_text(result))


def segment(a) -> int:
    from ivdseg.progress import Reporter
    from ivdseg.io.volumes import read_volume

    check_batch_size(a)
    _check_output(a.output, a.overwrite, a.input)
    if a.overlay:
        check_folder_of(a.overlay, "--overlay")
    for option, path, ending in (("--points", a.points, ".mrk.json"), ("--table", a.table, ".csv")):
        if path is not None:
            if not path.name.lower().endswith(ending):
                raise IvdsegError(f"{option} {path}: the file must end in {ending}.")
            check_folder_of(path, option)
            if path.exists() and not a.overwrite:
                raise IvdsegError(f"{path} already exists; pass --overwrite to replace it.")
    rle_csv = getattr(a, "rle_csv", None)
    if rle_csv is not None:
        if not rle_csv.name.lower().endswith(".csv"):
            raise IvdsegError(f"--rle-csv {rle_csv}: the file must end in .csv.")
        check_folder_of(rle_csv, "--rle-csv")
        if rle_csv.exists() and not a.overwrite:
            raise IvdsegError(f"{rle_csv} already exists; pass --overwrite to replace it.")
    reporter = Reporter.auto(a.progress)
    from ivdseg.io.images2d import is_image_series, read_image_series

    if is_image_series(a.input):  # PNG/JPG slices: a volume of the images as stored, ids from their names
        series = read_image_series(a.input)
        volume, slice_ids = series.volume, series.ids
    else:
        volume = read_volume(a.input, series_uid=a.series)
        slice_ids = None
    result = _segment_to_files(a, reporter, volume, str(a.input), a.output, a.overlay, a.overwrite)
    if rle_csv is not None:
        from ivdseg.data.rle import write_rle_csv
        from ivdseg.inference.segment import rle_table_rows
        from ivdseg.models.package import read_card, resolve_model

        stem = a.input.name.split(".")[0] or "slice"
        ids = slice_ids or [f"{stem}_slice_{k:04d}" for k in range(result.slices)]
        write_rle_csv(rle_csv, rle_table_rows(result, ids, read_card(resolve_model(a.model))), overwrite=a.overwrite)
    _report_done(reporter, result, output=str(a.output))
    return 0


DEMO_CASE = "ivd_lumbar_t2/nifti/case25"  # a test patient of the bundled model: it chose nothing


def demo(a) -> int:
    from ivdseg.eval.metrics import dice_per_class
    from ivdseg.progress import Reporter
    from ivdseg.data.sample_data import sample_data_dir
    from ivdseg.io.volumes import read_volume

    check_batch_size(a)
    reporter = Reporter.auto(a.progress)
    root = a.sample_data or sample_data_dir()
    image_path = root / f"{DEMO_CASE}_T2w.nii.gz"
    truth_path = root / f"{DEMO_CASE}_ivd_labels.nii.gz"
    if not image_path.is_file():
        raise IvdsegError(f"The demo case {image_path} is missing; pass --sample-data or set IVDSEG_SAMPLE_DATA.")
    a.output_dir.mkdir(parents=True, exist_ok=True)
    out, png = a.output_dir / "case25_discs.nii.gz", a.output_dir / "case25_overlay.png"
    volume = read_volume(image_path)
    result = _segment_to_files(a, reporter, volume, str(image_path), out, png, overwrite=True)
    disc = next((c["value"] for c in result.classes if c["name"] == "intervertebral disc"), None)
    if disc is None:
        raise IvdsegError("The demo scores discs, but this model has no 'intervertebral disc' class.")
    truth = read_volume(truth_path).array > 0
    dice = float(dice_per_class(truth, result.labelmap.array == disc, 2)[1])
    _report_done(reporter, result, output=str(out), overlay=str(png), dice=round(dice, 4))
    if reporter.mode == "text":
        reporter.message(f"Wrote {out} and {png}. Disc Dice against the sample's manual labels: {dice:.4f}.")
    return 0


def series(a) -> int:
    from ivdseg.io.dicom_index import index_folder

    series = index_folder(a.folder)
    if not series:
        raise IvdsegError(f"{a.folder} holds no DICOM image series.")
    print(f"{'SeriesInstanceUID':<66} {'modality':<8} {'slices':>6}  {'orientation':<11} description")
    for s in series:
        print(f"{s.series_uid:<66} {s.modality:<8} {s.n_slices:>6}  {s.orientation:<11} {s.description}")
    return 0
