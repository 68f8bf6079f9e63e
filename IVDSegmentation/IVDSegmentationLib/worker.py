"""The worker process: ``python -m ivdseg ...`` with JSON-line progress, readable from a QTimer or a loop.

The GUI never imports TensorFlow; it starts the worker, polls its events without blocking, and
Cancel ends the whole process tree (the worker runs in its own process group / session).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ivdseg.progress import parse_event

CORE_DIR = Path(__file__).resolve().parents[1]  # the folder holding the ivdseg package


def workerEnvironment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CORE_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerJob:
    """A running ``ivdseg`` command.

    poll() returns the events that arrived since the last call (never blocks); ``finished`` turns
    True once the process has ended and its output is read; cancel() ends the process tree.
    """

    def __init__(self, args, python=None, cwd=None):
        self.args = [str(a) for a in args]
        self.python = python or sys.executable
        self.events: list[dict] = []
        self.cancelled = False
        self._queue: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self.startTime = time.time()
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self.process = subprocess.Popen(
            [self.python, "-m", "ivdseg", *self.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", env=workerEnvironment(),
            cwd=cwd, **kwargs)
        self._threads = [threading.Thread(target=self._readStdout, daemon=True),
                         threading.Thread(target=self._readStderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _readStdout(self):
        for line in self.process.stdout:
            event = parse_event(line)
            if event is not None:
                self._queue.put(event)

    def _readStderr(self):
        for line in self.process.stderr:
            self._stderr.append(line)

    def poll(self) -> list:
        """Events that arrived since the last call."""
        new = []
        while True:
            try:
                new.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.events += new
        return new

    @property
    def finished(self) -> bool:
        if self.process.poll() is None:
            return False
        for t in self._threads:
            t.join(timeout=5)
        return True

    @property
    def returncode(self):
        return self.process.poll()

    @property
    def log(self) -> str:
        """The worker's stderr (library logs and the error sentence)."""
        return "".join(self._stderr)

    def errorMessage(self) -> str:
        """One sentence saying why the worker failed."""
        self.poll()
        for event in reversed(self.events):
            if event.get("event") == "error":
                return event.get("message", "")
        if self.cancelled:
            return "Cancelled."
        lines = [line.strip() for line in self._stderr if line.strip()]
        for line in reversed(lines):
            if line.startswith("ivdseg "):
                return line.split(": ", 1)[-1]
        if any("No module named" in line for line in lines):
            missing = next(line for line in reversed(lines) if "No module named" in line)
            return f"The worker's Python lacks a package ({missing.split('No module named')[-1].strip()}); install the inference dependencies."
        if any("MemoryError" in line or "OOM" in line for line in lines):
            return "The worker ran out of memory; lower the batch size or use the CPU."
        return f"The worker stopped with exit code {self.returncode}; see its log for details."

    def wait(self, timeout=None, onEvent=None) -> int:
        """Blocks until the worker ends, passing events to ``onEvent``; returns the exit code."""
        deadline = None if timeout is None else time.time() + timeout
        while not self.finished:
            for e in self.poll():
                if onEvent:
                    onEvent(e)
            if deadline is not None and time.time() > deadline:
                self.cancel()
                raise TimeoutError(f"the worker did not finish within {timeout} s")
            time.sleep(0.05)
        for e in self.poll():
            if onEvent:
                onEvent(e)
        return self.returncode

    def cancel(self, grace=0.5):
        """Ends the worker and its children: SIGTERM to the group, SIGKILL after ``grace`` seconds."""
        if self.process.poll() is not None:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
        else:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process.wait(timeout=5)
