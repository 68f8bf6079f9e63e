"""JobMonitor: how every panel follows a worker job from a GUI timer (no Qt here, so pytest drives it too).

Each tick reads ``job.finished`` BEFORE polling the events: once the process has ended and its output is read,
the poll that follows holds every event, so a "done" arriving between the two can never be lost. The finish
callback runs exactly once, after the last event.
"""

from __future__ import annotations

from typing import Callable


class JobMonitor:
    """Dispatches a job's events to ``onEvent`` and calls ``onFinished(job)`` once, after the last event.

    Args:
        job: anything with ``finished`` (non-blocking) and ``poll()`` returning new event dicts (a WorkerJob,
            or a SegmentationJob / ExportJob wrapping one).
        onEvent: called with each event dict, in order.
        onFinished: called with the job once it has ended and every event was dispatched.
    """

    def __init__(self, job, onEvent: Callable[[dict], None] | None = None,
                 onFinished: Callable[[object], None] | None = None):
        self.job = job
        self.onEvent = onEvent
        self.onFinished = onFinished
        self.done = False

    def tick(self) -> bool:
        """One poll; returns True once the job is over (and onFinished has run)."""
        if self.done:
            return True
        finished = self.job.finished
        for event in self.job.poll():
            if self.onEvent is not None:
                self.onEvent(event)
        if finished:
            self.done = True
            if self.onFinished is not None:
                self.onFinished(self.job)
        return self.done
