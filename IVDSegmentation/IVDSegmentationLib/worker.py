"""The worker process: ``python -m ivdseg ...`` with JSON-line progress, readable from a GUI timer or a loop.

The GUI never imports TensorFlow; it starts the worker, polls its events without blocking, and stops it without
relying on signals. Inside Slicer ``sys.executable`` is PythonSlicer, a launcher that starts python-real as its
child and forwards no signal (CTKAppLauncher), so a SIGTERM would end the launcher only. Instead:

1. a stop request writes the job's stop file (``IVDSEG_STOP_FILE``) and closes the worker's stdin
   (``IVDSEG_STOP_ON_STDIN_EOF``; PythonSlicer hands its stdin to python-real): both reach the real worker
   through any launcher, on Linux, macOS and Windows (see ivdseg.stop);
2. a cancel adds a deadline: once it passes, the whole process tree is killed (its process group on POSIX,
   ``taskkill /T`` on Windows), launcher and python-real alike.

Nothing here blocks: ``cancel()`` returns at once and ``finished`` escalates to the kill when the deadline is due,
so a GUI timer that polls ``finished`` ends a cancelled job within the grace period.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ivdseg.progress import parse_event
from ivdseg.stop import EXIT_CANCELLED, STOP_FILE_ENV, STOP_ON_STDIN_EOF_ENV

CORE_DIR = Path(__file__).resolve().parents[1]  # the folder holding the ivdseg package
CANCEL_GRACE_S = 0.5  # inference and export: the worker stops between batches, else it is killed
READER_GRACE_S = 2.0  # after the process ended: how long its output pipes may stay open (a stray grandchild)
# Variables the launcher sets for Slicer's own Python; another Python must not see them.
LAUNCHER_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSTARTUP", "PYTHONEXECUTABLE")
_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000
_STARTF_USESHOWWINDOW = 0x00000001
_SW_HIDE = 0


def isForeignPython(python) -> bool:
    """True when ``python`` is not the interpreter running this code (i.e. not PythonSlicer inside Slicer)."""
    if not python:
        return False
    with contextlib.suppress(OSError):
        return os.path.realpath(python) != os.path.realpath(sys.executable)
    return True


def _startupEnvironment() -> dict | None:
    """Slicer's environment before its launcher changed it, or None outside the Slicer application."""
    try:
        import slicer

        return dict(slicer.util.startupEnvironment())
    except Exception:  # noqa: BLE001 - no slicer.app (pytest, PythonSlicer without GUI): no startup environment
        return None


def workerEnvironment(python=None, base: dict | None = None) -> dict:
    """The environment of a worker (or of a probe) run by ``python``.

    Slicer's own Python (PythonSlicer) gets this process's environment. Another Python gets Slicer's startup
    environment (``slicer.util.startupEnvironment()``, without the launcher's PYTHONHOME/PYTHONPATH, which would
    make it load Slicer's standard library), and in any case none of LAUNCHER_VARIABLES. Both find the core
    through PYTHONPATH = the module folder.

    Args:
        python: the worker's interpreter; None = this one.
        base: the environment to start from (tests); default as above.
    """
    foreign = isForeignPython(python)
    if base is None:
        base = (_startupEnvironment() if foreign else None) or dict(os.environ)
    env = dict(base)
    if foreign:
        for name in LAUNCHER_VARIABLES:
            env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(CORE_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def processOptions(osName: str | None = None) -> dict:
    """Popen keyword arguments that put the worker in its own process group and, on Windows, hide its console.

    Windows: a new process group (so a console Ctrl-C of Slicer does not reach it), no console window
    (CREATE_NO_WINDOW) and a hidden window if one is made anyway (STARTUPINFO with SW_HIDE, as
    slicer.util.launchConsoleProcess does). POSIX: a new session, whose process group is killed whole.
    """
    osName = osName or os.name
    if osName != "nt":
        return {"start_new_session": True}
    startupinfo = subprocess.STARTUPINFO()
    startupinfo.dwFlags |= getattr(subprocess, "STARTF_USESHOWWINDOW", _STARTF_USESHOWWINDOW)
    startupinfo.wShowWindow = getattr(subprocess, "SW_HIDE", _SW_HIDE)
    flags = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", _CREATE_NEW_PROCESS_GROUP)
             | getattr(subprocess, "CREATE_NO_WINDOW", _CREATE_NO_WINDOW))
    return {"creationflags": flags, "startupinfo": startupinfo}


def killProcessTree(process: subprocess.Popen) -> None:
    """Kills ``process`` and every process it started (also those left behind by a launcher that died)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True,
                       **processOptions())
        with contextlib.suppress(OSError):
            process.kill()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the group outlives its leader while members remain


class WorkerJob:
    """A running ``ivdseg`` command.

    poll() returns the events that arrived since the last call (never blocks); ``finished`` turns True once the
    process has ended and its output is read; requestStop() asks it to stop (training packages its best model);
    cancel() asks it to stop and kills the process tree after a grace period; kill() kills it now.

    Args:
        args: the ivdseg command line (e.g. ["segment", in, "-o", out]).
        python: the interpreter (default: this one: PythonSlicer in Slicer); may be another environment's.
        cwd: working folder of the worker.
    """

    def __init__(self, args, python=None, cwd=None):
        self.args = [str(a) for a in args]
        self.python = python or sys.executable
        self.events: list[dict] = []
        self.cancelled = self.stopRequested = self.killed = False
        self._queue: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._killAt: float | None = None
        self._endedAt: float | None = None
        self.startTime = time.time()
        # Private (0700) folder for the stop file: nobody else can stop the job or see its name.
        self._controlDir = tempfile.mkdtemp(prefix="ivdseg-worker-")
        self.stopFile = Path(self._controlDir) / "stop"
        env = workerEnvironment(self.python)
        env[STOP_FILE_ENV] = str(self.stopFile)
        env[STOP_ON_STDIN_EOF_ENV] = "1"
        try:
            self.process = subprocess.Popen(
                [self.python, "-m", "ivdseg", *self.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env, cwd=cwd,
                **processOptions())
        except OSError as exc:
            shutil.rmtree(self._controlDir, ignore_errors=True)
            raise ValueError(f"The worker Python {self.python} could not be started ({exc.strerror or exc}); "
                             "check the path under Advanced.") from None
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

    # ------------------------------------------------------------ reading
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
        """True once the process has ended and its output is read. Never blocks; kills a cancelled job whose
        grace period is over."""
        if self.process.poll() is None:
            if self._killAt is not None and time.monotonic() >= self._killAt:
                self.kill()
            return False
        if self._endedAt is None:
            self._endedAt = time.monotonic()
        readersDone = not any(t.is_alive() for t in self._threads)
        now = time.monotonic()
        cancelDue = self._killAt is not None and now >= self._killAt
        if not readersDone and not cancelDue and now - self._endedAt < READER_GRACE_S:
            return False
        if not readersDone:  # a grandchild (the real worker behind a dead launcher) holds the pipes: end it
            killProcessTree(self.process)
            self.killed = True
        shutil.rmtree(self._controlDir, ignore_errors=True)
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
        if self.cancelled or self.killed or self.returncode == EXIT_CANCELLED:
            return "Cancelled."
        lines = [line.strip() for line in self._stderr if line.strip()]
        for line in reversed(lines):
            if line.startswith("ivdseg "):
                return line.split(": ", 1)[-1]
        if any("No module named" in line for line in lines):
            missing = next(line for line in reversed(lines) if "No module named" in line)
            return (f"The worker's Python lacks a package ({missing.split('No module named')[-1].strip()}); "
                    "install the inference dependencies.")
        if any("MemoryError" in line or "OOM" in line for line in lines):
            return "The worker ran out of memory; lower the batch size or use the CPU."
        return f"The worker stopped with exit code {self.returncode}; see its log for details."

    # ------------------------------------------------------------ stopping
    def requestStop(self) -> None:
        """Asks the worker to stop (stop file + closed stdin); returns at once. Training packages its best model."""
        if self.stopRequested:
            return
        self.stopRequested = True
        with contextlib.suppress(OSError):
            self.stopFile.touch()
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.close()

    def cancel(self, grace: float = CANCEL_GRACE_S) -> None:
        """Asks the worker to stop and kills its process tree once ``grace`` seconds have passed (checked by
        ``finished``); returns at once."""
        if self.process.poll() is not None and not any(t.is_alive() for t in self._threads):
            return  # over, output read: nothing of the job is left
        self.cancelled = True
        self.requestStop()
        deadline = time.monotonic() + grace
        self._killAt = deadline if self._killAt is None else min(self._killAt, deadline)

    def kill(self) -> None:
        """Kills the worker's process tree now, also when the process it started (a launcher) is gone already and
        the real worker runs on without it."""
        if self.process.poll() is not None and not any(t.is_alive() for t in self._threads):
            return
        self.killed = True
        killProcessTree(self.process)

    def wait(self, timeout=None, onEvent=None, idle=None) -> int:
        """Blocks until the worker ends, passing events to ``onEvent``; returns the exit code. For scripts and
        tests: the GUI polls ``finished`` from a timer instead.

        Args:
            timeout: seconds; then the job is cancelled and TimeoutError raised.
            onEvent: called with each event dict.
            idle: called between polls instead of sleeping (e.g. to process GUI events).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = self.finished  # before polling: once True, every event is in the queue
            for e in self.poll():
                if onEvent:
                    onEvent(e)
            if finished:
                return self.returncode
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                while not self.finished:
                    time.sleep(0.02)
                raise TimeoutError(f"the worker did not finish within {timeout} s")
            (idle or (lambda: time.sleep(0.02)))()
