"""JobRunner: a QTimer that drives a JobMonitor, the one way both panels follow their worker jobs."""

import qt

from IVDSegmentationLib.jobs import JobMonitor


class JobRunner:
    """Follows one job at a time from the GUI thread: ``start(job, onEvent, onFinished)``, then every
    ``intervalMs`` a non-blocking tick (IVDSegmentationLib.jobs.JobMonitor) until the job is over.

    ``job`` is None when no job runs. ``onFinished`` runs once, after the last event, with the job.
    """

    def __init__(self, intervalMs: int = 100):
        self.job = None
        self._monitor = None
        self._timer = qt.QTimer()
        self._timer.setInterval(intervalMs)
        self._timer.connect("timeout()", self._tick)

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, job, onEvent=None, onFinished=None) -> None:
        if self.job is not None:
            raise RuntimeError("A job is already running.")

        def finished(finishedJob):
            self._timer.stop()
            self.job, self._monitor = None, None
            if onFinished is not None:
                onFinished(finishedJob)

        self.job = job
        self._monitor = JobMonitor(job, onEvent, finished)
        self._timer.start()

    def _tick(self) -> None:
        if self._monitor is None:
            self._timer.stop()
            return
        self._monitor.tick()

    def cancel(self) -> None:
        """Asks the running job to stop; it ends through the next ticks (never blocks the GUI)."""
        if self.job is not None:
            self.job.cancel()

    def stop(self) -> None:
        """Stops following (module cleanup, Slicer quits): asks the job to stop and forgets it. Nobody polls it any
        more, so it is not killed: it ends by itself (inference at its next batch, training once it has packaged
        its best model into the run folder)."""
        self._timer.stop()
        if self.job is not None:
            job = getattr(self.job, "worker", self.job)  # a SegmentationJob / ExportJob wraps a WorkerJob
            job.requestStop()
        self.job, self._monitor = None, None
