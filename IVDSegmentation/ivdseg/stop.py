"""Stop requests that do not depend on a signal reaching the worker.

Inside Slicer the worker is started through PythonSlicer, a launcher (CTKAppLauncher) that runs python-real as its
child and forwards no signal: a SIGTERM sent to the process the GUI started ends the launcher only. So the GUI asks
the worker to stop in two ways that cross any launcher, the same on Linux, macOS and Windows:

* a stop file: the path in ``IVDSEG_STOP_FILE``; the worker stops once the file exists;
* its standard input: with ``IVDSEG_STOP_ON_STDIN_EOF=1`` the worker stops when its stdin reaches end-of-file,
  which also happens when the process that started it dies (no orphan keeps the GPU).

SIGTERM and Ctrl-C (SIGINT) are stop requests too, for terminal users. What a stop means depends on the command:
training leaves its epoch loop at the next batch and packages the best model so far (repeated requests are ignored
while it packages); inference and export raise :class:`Cancelled` at the next slice batch or case, before any
output is renamed into place. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from ivdseg.errors import IvdsegError

STOP_FILE_ENV = "IVDSEG_STOP_FILE"
STOP_ON_STDIN_EOF_ENV = "IVDSEG_STOP_ON_STDIN_EOF"
EXIT_CANCELLED = 3
POLL_SECONDS = 0.05


class Cancelled(IvdsegError):
    """The run was asked to stop before it finished; nothing was written."""


class StopRequest:
    """A flag set once by whichever source asks first (stop file, stdin EOF, signal, or :meth:`request`)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._interrupts = 0

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def check(self) -> None:
        """Raises :class:`Cancelled` once a stop was requested (call it between units of work)."""
        if self._event.is_set():
            raise Cancelled(f"Cancelled ({self.reason}); nothing was written.")

    def guard(self, progress):
        """A progress callback that first checks for a stop request, then calls ``progress`` (if any)."""
        def guarded(*args, **kwargs):
            self.check()
            if progress is not None:
                progress(*args, **kwargs)
        return guarded

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    # ------------------------------------------------------------ sources
    def watch_file(self, path) -> None:
        """Sets the flag once ``path`` exists (polled by a daemon thread)."""
        path = Path(path)

        def poll():
            while not self._event.wait(POLL_SECONDS):
                if path.exists():
                    self.request("stop file")
                    return

        threading.Thread(target=poll, name="ivdseg-stop-file", daemon=True).start()

    def watch_stdin(self, stream=None) -> None:
        """Sets the flag when ``stream`` (default: stdin) reaches end-of-file or breaks."""
        stream = stream if stream is not None else sys.stdin

        def read():
            try:
                while stream.read(1):
                    pass
            except (OSError, ValueError):
                pass
            self.request("the parent closed the worker's input")

        if stream is not None:
            threading.Thread(target=read, name="ivdseg-stop-stdin", daemon=True).start()

    def watch_signals(self) -> None:
        """SIGTERM and the first SIGINT request a stop; a second SIGINT raises KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum, frame):
            if self.requested:
                print("ivdseg: already stopping; send SIGKILL to end at once.", file=sys.stderr, flush=True)
            self.request("SIGTERM")

        def on_int(signum, frame):
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
            print("ivdseg: stopping (Ctrl-C again to interrupt at once).", file=sys.stderr, flush=True)
            self.request("Ctrl-C")

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)


def from_environment(environ=None) -> StopRequest:
    """A StopRequest watching what the environment names (the GUI's worker sets both), and the signals."""
    environ = os.environ if environ is None else environ
    stop = StopRequest()
    if environ.get(STOP_FILE_ENV):
        stop.watch_file(environ[STOP_FILE_ENV])
    if environ.get(STOP_ON_STDIN_EOF_ENV) == "1":
        stop.watch_stdin()
    stop.watch_signals()
    return stop
