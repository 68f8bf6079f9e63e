"""The batch journal: what a batch has done, appended one line at a time, so that a killed batch loses at most the
series in flight and a re-run does only the rest.

``OUTDIR/batch-journal.jsonl``: a header line (the model and the settings the outputs depend on), then one JSON
object per finished series: ``{"key", "state": "done", "output", "sha256", ...}`` or ``{"key", "state": "failed",
"reason"}``. A series' last line is its state. Each line is written with one ``write`` and flushed to disk before
the batch goes on; a line cut by a kill (the last one) is ignored when the journal is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ivdseg.errors import IvdsegError

JOURNAL_NAME = "batch-journal.jsonl"
FORMAT = "ivdseg-batch-journal"
# The header entries a re-run must repeat: the outputs of another model, format or naming are another batch.
IDENTITY_KEYS = ("model", "model_version", "model_sha256", "output_format", "levels", "pseudonymized")


def file_stamp(path) -> str:
    """Size and modification time of a file: what a re-run compares before it reads the file for its checksum."""
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Journal:
    """An open journal: the state of every series so far, and :meth:`record` to append one.

    Args:
        outdir: the batch's output folder (created when missing).
        header: the model and settings of this batch (:data:`IDENTITY_KEYS` and any other entries).
        overwrite: start a new journal, forgetting what the old one recorded (a journal of another batch is refused
            otherwise).

    Raises:
        IvdsegError: OUTDIR holds the journal of another batch (another model, format, levels or pseudonymisation)
            and not ``overwrite``; the journal cannot be read or written.
    """

    def __init__(self, outdir, header: dict, overwrite: bool = False):
        self.path = Path(outdir) / JOURNAL_NAME
        self.header = {"format": FORMAT, "version": 1, **header}
        self.states: dict[str, dict] = {}
        if self.path.exists():
            old_header, self.states = read_journal(self.path)
            if not overwrite:
                self._heal()
            differ = [k for k in IDENTITY_KEYS if old_header.get(k) != self.header.get(k)]
            if differ and not overwrite:
                was = ", ".join(f"{k} {old_header.get(k)!r}" for k in differ)
                now = ", ".join(f"{k} {self.header.get(k)!r}" for k in differ)
                raise IvdsegError(f"{self.path.parent} holds the journal of another batch ({was}; this one: {now}); "
                                  "choose another output folder or pass --overwrite to start afresh there.")
        if overwrite or not self.path.exists():  # --overwrite starts afresh: every series is done again
            self.states = {}
            self._start()

    def _start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.header) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise IvdsegError(f"Cannot write the batch journal {self.path} ({exc.strerror}).") from None

    def _heal(self) -> None:
        """Cuts a last line that a kill or a full disk left unfinished (read_journal ignored it), so that the next
        record starts on a line of its own."""
        try:
            with open(self.path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        except OSError as exc:
            raise IvdsegError(f"Cannot repair the batch journal {self.path} ({exc.strerror}).") from None

    def done(self, key: str, stamp: str | None = None) -> bool:
        """Whether ``key`` is done, from the same input (``stamp``, when the record has one), and its output is still
        the file the journal recorded."""
        state = self.states.get(key)
        if not state or state.get("state") != "done":
            return False
        if stamp is not None and state.get("input_stamp") not in (None, stamp):
            return False
        output = Path(state.get("output", ""))
        if not output.is_file():
            return False
        # an output untouched since it was recorded is not read again (thousands of them, at every re-run)
        return state.get("output_stamp") == file_stamp(output) or sha256_of(output) == state.get("sha256")

    def failed(self, key: str) -> bool:
        """Whether ``key`` failed for a reason of its own; a series failed by a full disk is to be done again."""
        state = self.states.get(key) or {}
        return state.get("state") == "failed" and not state.get("disk_full")

    def record(self, entry: dict) -> None:
        """Appends one series' state (``key`` and ``state`` at least) and flushes it to disk.

        Raises:
            IvdsegError: the journal cannot be written (e.g. the disk is full).
        """
        entry = {**entry, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        line = json.dumps(entry) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise IvdsegError(f"Cannot append to the batch journal {self.path} ({exc.strerror}); the batch stopped "
                              "and what it recorded before stands.") from None
        self.states[entry["key"]] = entry


def read_journal(path) -> tuple[dict, dict[str, dict]]:
    """(header, {key: last entry}) of a journal; a last line cut by a kill is ignored.

    Raises:
        IvdsegError: the file is not a batch journal.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise IvdsegError(f"The batch journal {path} cannot be read ({exc}).") from None
    entries = []
    for n, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # the line a kill cut short
                break
            raise IvdsegError(f"Line {n + 1} of the batch journal {path} is damaged; move the journal away to start "
                              "afresh.") from None
    if not entries or not isinstance(entries[0], dict) or entries[0].get("format") != FORMAT:
        raise IvdsegError(f"{path} is not an ivdseg batch journal; move it away or choose another output folder.")
    states = {}
    for entry in entries[1:]:
        if isinstance(entry, dict) and "key" in entry:
            states[entry["key"]] = entry
    return entries[0], states
