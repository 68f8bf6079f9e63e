"""``ivdseg batch``: thousands of series as one resumable batch, with one results table (:mod:`ivdseg.batch`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ivdseg.errors import IvdsegError


def _gpu_count() -> int:
    """NVIDIA GPUs the driver lists (0 where there is no driver)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


class _Progress:
    """Series done / failed / left and the rate: a bar on a terminal, JSON lines otherwise."""

    def __init__(self, reporter):
        self.reporter = reporter
        self.t0 = time.perf_counter()
        self.tty = reporter.mode == "text" and sys.stdout.isatty()

    def __call__(self, summary, total):
        finished = summary.done + summary.failed
        left = total - summary.skipped - finished
        rate = finished / max(time.perf_counter() - self.t0, 1e-9) * 60.0
        if self.tty:
            width = 30
            filled = int(width * (total - left) / max(total, 1))
            sys.stdout.write(f"\r   batch [{'#' * filled}{'.' * (width - filled)}] {summary.done} done, "
                             f"{summary.failed} failed, {left} left, {rate:.1f} series/min ")
            sys.stdout.flush()
        else:
            self.reporter.emit("progress", stage="batch", done=total - left, total=total, series_done=summary.done,
                               failed=summary.failed, skipped=summary.skipped, left=left,
                               series_per_minute=round(rate, 2))

    def close(self):
        if self.tty:
            sys.stdout.write("\n")


def batch(a) -> int:
    from ivdseg.batch.items import find_items
    from ivdseg.batch.journal import Journal
    from ivdseg.batch.results import write_results
    from ivdseg.batch.runner import DaskPool, LocalPool, run_batch
    from ivdseg.models.package import read_card, resolve_model
    from ivdseg.progress import Reporter

    if a.batch_size < 1:
        raise IvdsegError(f"--batch-size must be at least 1, got {a.batch_size}.")
    if a.workers is not None and a.workers < 1:
        raise IvdsegError(f"--workers must be at least 1, got {a.workers}.")
    if a.output.exists() and not a.output.is_dir():
        raise IvdsegError(f"{a.output} is a file; give the folder the batch writes into.")
    if not a.output.parent.is_dir():
        raise IvdsegError(f"The folder {a.output.parent} does not exist; create it first.")
    package = resolve_model(a.model)
    card = read_card(package)
    suffix = "." + a.format.lstrip(".")
    items = find_items(a.input, a.output, suffix)
    patient_of = None
    if a.pseudonymize:
        from ivdseg.data.export import load_or_create_pseudonym_key, pseudonym

        key, _ = load_or_create_pseudonym_key(a.pseudonymize)
        patient_of = lambda patient: pseudonym(key, a.source_name, patient) if patient else ""  # noqa: E731
    from ivdseg.batch.journal import sha256_of

    weights = next((package / n for n in ("model.onnx", "model.keras") if (package / n).is_file()), package)
    header = {"model": card["name"], "model_version": card["version"],
              "model_sha256": sha256_of(weights) if weights.is_file() else "", "output_format": suffix,
              "levels": bool(a.levels), "pseudonymized": bool(a.pseudonymize)}
    settings = {"model": str(package), "backend": a.backend, "device": a.device, "batch_size": a.batch_size,
                "levels": bool(a.levels), "no_tta": a.no_tta}
    reporter = Reporter.auto(a.progress)
    if a.scheduler:  # reached before anything is written: a scheduler out of reach leaves no folder or journal
        pool = DaskPool(a.scheduler, workers=a.workers or 1)
        where = f"{pool.workers} Dask worker(s) of {a.scheduler}"
    else:
        gpus = _gpu_count() if a.device != "cpu" else 0
        workers = a.workers or max(1, gpus)
        pool = LocalPool(workers, gpus=gpus)
        where = f"{workers} local worker(s)" + (", one per GPU" if gpus else "")
    try:
        a.output.mkdir(exist_ok=True)
        journal = Journal(a.output, header, overwrite=a.overwrite)
    except BaseException:
        pool.close(cancel=True)
        raise
    reporter.message(f"{len(items)} series, model {card['name']} {card['version']}, {where}.")
    progress = _Progress(reporter)
    try:
        summary = run_batch([{**i.to_dict(), "stamp": i.stamp()} for i in items], journal, settings, pool,
                            retry_failed=a.retry_failed, progress=progress, stop=a.stop, patient_of=patient_of)
    finally:
        progress.close()
    tables = write_results(a.output, journal.states)
    for key, reason in sorted(summary.failures.items()):
        reporter.message(f"Failed: {key}: {reason}")
    rate = (summary.done + summary.failed) / max(summary.seconds, 1e-9) * 60.0
    reporter.emit("done", output=str(a.output), done=summary.done, failed=summary.failed, skipped=summary.skipped,
                  left=summary.left, seconds=round(summary.seconds, 1), series_per_minute=round(rate, 2),
                  results=[str(t) for t in tables])
    if summary.stopped:
        raise IvdsegError(summary.stopped)
    failed = [i.key for i in items if journal.states.get(i.key, {}).get("state") == "failed"]
    if failed and not summary.failed:
        reporter.message(f"{len(failed)} series failed in an earlier run; --retry-failed runs them again.")
    return 3 if failed else 0


def add_parser(sub):
    """The ``batch`` subcommand and its own options (the caller adds the inference options); returns it."""
    b = sub.add_parser("batch", help="segment every series of a folder tree or a CSV manifest as one resumable batch, "
                                     "with one results table")
    b.add_argument("input", type=Path, help="a folder tree (every DICOM series and .nii/.nii.gz/.nrrd in it) or a CSV "
                                            "manifest with the columns input,output[,series]")
    b.add_argument("-o", "--output", type=Path, required=True, help="the batch's folder: outputs, journal, results")
    b.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "seg.nrrd", "dcm"],
                   help="output format of each series (dcm: a DICOM SEG, DICOM inputs only)")
    b.add_argument("--levels", action="store_true", help="one label per disc named by its level; the results "
                                                         "table gets one row per disc with its measurements")
    b.add_argument("--workers", type=int, help="local worker processes (default: one per GPU, else 1), each pinned "
                                               "to its share of the cores; with --scheduler slurm|pbs, the jobs")
    b.add_argument("--scheduler", help="run on an existing Dask cluster: its scheduler address (tcp://host:8786), or "
                                       "slurm / pbs for a dask-jobqueue cluster (pip install 'ivdseg[cluster]')")
    b.add_argument("--retry-failed", action="store_true", help="run the series that failed before again")
    b.add_argument("--overwrite", action="store_true", help="start afresh in a folder that holds a batch "
                                                            "(of another model too)")
    b.add_argument("--pseudonymize", type=Path, metavar="KEYFILE",
                   help="the results carry keyed pseudonyms instead of PatientIDs (the dataset export's hash and "
                        "key file: created when missing)")
    b.add_argument("--source-name", default="archive",
                   help="the source name in the pseudonym hash (give your export spec's source name to get the same "
                        "pseudonyms as the dataset export)")
    return b

