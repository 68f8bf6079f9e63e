"""One series of a batch, in a worker process: read it, segment it with the model this process opened once, write
its outputs atomically, and say what happened in a plain dict (never an exception: one bad series never stops the
others; a full disk is flagged so that the batch stops).

The same function runs in local worker processes and on Dask workers: it takes and returns plain dicts.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from types import SimpleNamespace

from ivdseg.errors import IvdsegError

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def pin_worker(cores: list[int] | None, gpu: int | None = None) -> None:
    """Confines this process to ``cores`` (and its inference to that many threads) and to one GPU; call it before
    the model is opened."""
    if cores:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cores))
        for name in ("IVDSEG_THREADS", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            os.environ[name] = str(len(cores))
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def _disk_full(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, IvdsegError):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def table_path(output: str) -> Path:
    """Where a series' disc measurements go with --levels: beside its output, ``<name>_discs.csv``."""
    path = Path(output)
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + "_discs.csv")


def run_item(item: dict, settings: dict) -> dict:
    """Segments one :class:`~ivdseg.batch.items.BatchItem` (as a dict) with ``settings`` (model, backend, device,
    batch_size, levels, no_tta).

    Returns:
        {"key", "state": "done", "output", "sha256", "seconds", "slices", "volumes_ml", "table", "patient_id"} or
        {"key", "state": "failed", "reason": one sentence, "disk_full": bool}.
    """
    from ivdseg.batch.journal import file_stamp, sha256_of
    from ivdseg.commands.inference import _segment_to_files
    from ivdseg.progress import Reporter
    from ivdseg.stop import StopRequest

    t0 = time.perf_counter()
    output = Path(item["output"])
    levels = bool(settings.get("levels"))
    a = SimpleNamespace(model=settings.get("model"), backend=settings.get("backend", "auto"),
                        device=settings.get("device", "auto"), batch_size=int(settings.get("batch_size", 16)),
                        no_tta=bool(settings.get("no_tta")), levels=levels, points=None,
                        table=table_path(item["output"]) if levels else None, series=item.get("series_uid"),
                        stop=StopRequest())
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if item.get("files"):
            from ivdseg.io.dicom import read_series

            volume = read_series([Path(f) for f in item["files"]], series_uid=item.get("series_uid"))
            source = [Path(f) for f in item["files"]]
        else:
            from ivdseg.io.volumes import read_volume

            volume = read_volume(item["input"], series_uid=item.get("series_uid"))
            source = item["input"]
        result = _segment_to_files(a, Reporter("none"), volume, source, output, None, overwrite=True)
        return {"key": item["key"], "state": "done", "output": str(output), "sha256": sha256_of(output),
                "output_stamp": file_stamp(output),
                "seconds": round(time.perf_counter() - t0, 2), "slices": result.slices,
                "volumes_ml": result.volumes_ml, "table": str(a.table) if a.table and a.table.exists() else None,
                "patient_id": item.get("patient_id", ""), "device": result.device}
    except Exception as exc:  # noqa: BLE001 - every failure of one series is recorded, and the batch goes on
        return {"key": item["key"], "state": "failed", "reason": _reason(exc), "disk_full": _disk_full(exc)}
