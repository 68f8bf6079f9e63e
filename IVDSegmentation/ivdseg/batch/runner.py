"""Running a batch: the series not yet done go to workers (local processes, or the workers of a Dask cluster), each
finished one goes into the journal at once, and the results table is rebuilt from the journal at the end.

Local workers are processes started afresh (``spawn``: no inherited threads or model state), each pinned to its
share of the cores, or to one GPU each when there are GPUs, and each opening the model once
(:func:`ivdseg.inference.backends.cached_backend`). On a cluster the same :func:`ivdseg.batch.worker.run_item` runs
on Dask workers (``pip install ivdseg[cluster]``); each Dask worker process likewise opens the model once.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from dataclasses import dataclass, field

from ivdseg.batch.journal import Journal
from ivdseg.batch.worker import pin_worker, run_item
from ivdseg.errors import IvdsegError


@dataclass
class BatchSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0  # done in an earlier run
    left: int = 0  # not run: the batch stopped (a full disk, a stop request)
    stopped: str = ""  # why the batch stopped early, or ""
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # key -> reason, this run


def core_shares(workers: int, cores: list[int] | None = None) -> list[list[int]]:
    """The cores of each local worker: the usable cores dealt into ``workers`` contiguous shares (a share may be
    one core; with more workers than cores, cores are shared)."""
    cores = sorted(cores if cores is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
                                                    else range(os.cpu_count() or 1)))
    if workers <= len(cores):
        size, extra = divmod(len(cores), workers)
        shares, start = [], 0
        for k in range(workers):
            n = size + (1 if k < extra else 0)
            shares.append(cores[start:start + n])
            start += n
        return shares
    return [[cores[k % len(cores)]] for k in range(workers)]


def _init_local(slots) -> None:
    cores, gpu = slots.get()
    pin_worker(cores, gpu)


class LocalPool:
    """``workers`` local processes, each pinned to a share of the cores (or a GPU)."""

    def __init__(self, workers: int, gpus: int = 0):
        self.workers, self.gpus = workers, gpus
        self.executor = self._start()

    def _start(self):
        context = multiprocessing.get_context("spawn")
        slots = context.Queue()
        for k, cores in enumerate(core_shares(self.workers)):
            slots.put((cores, k if k < self.gpus else None))
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_init_local,
                                      initargs=(slots,))

    def restart(self) -> None:
        """A fresh set of workers after one died (a broken pool takes no more work)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._start()

    def submit(self, item: dict, settings: dict):
        return self.executor.submit(run_item, item, settings)

    def as_completed(self, futures):
        return cf.as_completed(futures)

    def close(self, cancel=False) -> None:
        self.executor.shutdown(wait=not cancel, cancel_futures=cancel)


class DaskPool:
    """The workers of an existing Dask cluster: a scheduler address, or a dask-jobqueue cluster ("slurm", "pbs")
    of ``workers`` jobs."""

    def __init__(self, scheduler: str, workers: int = 1, timeout_s: float = 10.0):
        try:
            from distributed import Client
        except ImportError:
            raise IvdsegError("--scheduler needs Dask distributed, which is not installed; install it with "
                              "pip install 'ivdseg[cluster]'.") from None
        self.cluster = None
        if scheduler in ("slurm", "pbs"):
            try:
                import dask_jobqueue
            except ImportError:
                raise IvdsegError(f"--scheduler {scheduler} needs dask-jobqueue, which is not installed; install it "
                                  "with pip install 'ivdseg[cluster]'.") from None
            cls = dask_jobqueue.SLURMCluster if scheduler == "slurm" else dask_jobqueue.PBSCluster
            self.cluster = cls(cores=int(os.environ.get("IVDSEG_JOB_CORES", "4")),
                               memory=os.environ.get("IVDSEG_JOB_MEMORY", "16GB"), processes=1)
            self.cluster.scale(jobs=workers)
            scheduler = self.cluster
        try:
            self.client = Client(scheduler, timeout=timeout_s)
        except (OSError, TimeoutError) as exc:
            raise IvdsegError(f"The Dask scheduler {scheduler} cannot be reached ({exc}); nothing was started.") from None
        self.requested = workers

    @property
    def workers(self) -> int:
        """The workers now connected (jobs of a jobqueue cluster join while the batch runs), at least those asked
        for: what the batch keeps busy."""
        return max(1, self.requested, len(self.client.scheduler_info().get("workers", {})))

    def restart(self) -> None:  # Dask replaces lost workers and reschedules their tasks itself
        pass

    def submit(self, item: dict, settings: dict):
        return self.client.submit(run_item, item, settings, key=f"ivdseg-{item['key']}-{time.time_ns()}", pure=False)

    def as_completed(self, futures):
        from distributed import as_completed

        return as_completed(futures)

    def close(self, cancel=False) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _result_of(future, item: dict) -> dict | None:
    """The worker's result, None when a local worker process died under it (the pool is broken), or a failure."""
    try:
        return future.result()
    except cf.process.BrokenProcessPool:
        return None
    except Exception as exc:  # noqa: BLE001 - e.g. a Dask worker lost too often: its series failed
        return {"key": item["key"], "state": "failed", "disk_full": False,
                "reason": f"The worker died while segmenting it ({type(exc).__name__}: {exc})."}


def run_batch(items: list[dict], journal: Journal, settings: dict, pool, retry_failed=False, progress=None,
              stop=None, patient_of=None) -> BatchSummary:
    """Segments the items the journal does not hold as done (nor as failed, unless ``retry_failed``).

    Args:
        items: :class:`~ivdseg.batch.items.BatchItem` dicts.
        journal: the open journal; each finished series is recorded as soon as it returns.
        settings: what :func:`~ivdseg.batch.worker.run_item` needs.
        pool: a :class:`LocalPool` or :class:`DaskPool`.
        progress: called as progress(summary, total) after each series.
        stop: a :class:`~ivdseg.stop.StopRequest`: when requested, nothing new starts and the batch ends after the
            series in flight.
        patient_of: maps a series' PatientID to what the journal keeps (a pseudonym), or None to keep it.

    Returns:
        The :class:`BatchSummary`; a full disk stops the batch (``stopped`` says so) after recording the series.
    """
    t0 = time.perf_counter()
    summary = BatchSummary()
    todo = []
    for item in items:
        if journal.done(item["key"], item.get("stamp")) or (journal.failed(item["key"]) and not retry_failed):
            summary.skipped += 1
        else:
            todo.append(item)
    total = len(items)
    pending = list(todo)
    in_flight: dict = {}
    suspects: dict[str, int] = {}  # series in flight when a worker died -> deaths seen; run alone until cleared

    def fill():
        limit = 1 if suspects else 2 * pool.workers  # alone, a series that kills its worker names itself
        while pending and len(in_flight) < limit and not summary.stopped and not (stop and stop.requested):
            item = pending.pop(0)
            try:
                future = pool.submit(item, settings)
            except cf.process.BrokenProcessPool:  # broke after its last result: start afresh, once
                pool.restart()
                future = pool.submit(item, settings)
            in_flight[future] = item

    fill()
    try:
        while in_flight:
            future = next(iter(pool.as_completed(list(in_flight))))
            item = in_flight.pop(future)
            result = _result_of(future, item)
            if result is None:  # a worker died: every series in flight comes back, the pool starts afresh
                lost = [item, *in_flight.values()]
                in_flight.clear()
                pool.restart()
                culprit = len(lost) == 1
                for each in reversed(lost):
                    suspects[each["key"]] = suspects.get(each["key"], 0) + 1
                    if culprit and suspects[each["key"]] >= 2:
                        result = {"key": each["key"], "state": "failed", "disk_full": False,
                                  "reason": "The worker process died while segmenting it, twice (out of memory?)."}
                        del suspects[each["key"]]
                    else:
                        pending.insert(0, each)
                if result is None:
                    fill()
                    continue
            suspects.pop(item["key"], None)
            if result["state"] == "done":
                if patient_of is not None:
                    result["patient_id"] = patient_of(result.get("patient_id", ""))
                summary.done += 1
            else:
                summary.failed += 1
                summary.failures[item["key"]] = result["reason"]
                if result.get("disk_full"):
                    summary.stopped = (f"The disk is full (writing {item['output']}); the batch stopped. Free space "
                                       "and run the same command again: it does only what is left.")
            journal.record({**result, "input": item["input"], "input_stamp": item.get("stamp")})
            if progress:
                progress(summary, total)
            fill()
    finally:
        pool.close(cancel=bool(summary.stopped or (stop and stop.requested)))
    summary.left = len(pending)
    if stop and stop.requested and not summary.stopped:
        summary.stopped = "Stopped on request; run the same command again to do what is left."
    summary.seconds = time.perf_counter() - t0
    return summary
