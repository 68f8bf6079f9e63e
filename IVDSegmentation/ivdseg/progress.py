"""Progress reporting: one JSON object per line (for the Slicer GUI and tests) or readable text.

Events (DESIGN.md):
``{"event": "progress", "done": 12, "total": 60, "stage": "infer"}``,
``{"event": "epoch", "epoch": 3, "loss": 0.21, "val_dice": 0.84}``,
``{"event": "message", "text": "..."}``, ``{"event": "error", "message": "..."}``,
``{"event": "done", ...summary}``.
"""

from __future__ import annotations

import json
import math
import sys


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


class Reporter:
    """Writes events to a stream, as JSON lines (``mode="jsonl"``) or text (``"text"``), or drops them ("none")."""

    def __init__(self, mode="jsonl", stream=None):
        if mode not in ("jsonl", "text", "none"):
            raise ValueError(f"progress mode must be jsonl, text or none, got {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self._bar_open = False

    @classmethod
    def auto(cls, mode="auto"):
        if mode == "auto":
            mode = "text" if sys.stdout.isatty() else "jsonl"
        return cls(mode)

    def emit(self, event: str, **fields) -> None:
        if self.mode == "none":
            return
        if self.mode == "jsonl":
            self.stream.write(json.dumps({"event": event, **_clean(fields)}) + "\n")
        elif event == "progress" and fields.get("total") and _isatty(self.stream):
            self.stream.write("\r" + _bar(fields["done"], fields["total"], fields["stage"]))
            self._bar_open = True
        else:
            if self._bar_open:
                self.stream.write("\n")
                self._bar_open = False
            self.stream.write(self._text(event, fields) + "\n")
        self.stream.flush()

    def progress(self, done: int, total: int, stage: str) -> None:
        self.emit("progress", done=int(done), total=int(total), stage=stage)

    def message(self, text: str) -> None:
        self.emit("message", text=text)

    @staticmethod
    def _text(event, f):
        if event == "progress":
            return f"[{f['stage']}] {f['done']}/{f['total']}" if f.get("total") else f"[{f['stage']}] {f['done']}"
        if event == "epoch":
            parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in f.items()]
            return "epoch " + " ".join(parts)
        if event == "message":
            return f["text"]
        return f"{event}: " + ", ".join(f"{k}={v}" for k, v in f.items())


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _bar(done, total, stage, width=30):
    filled = int(width * done / max(total, 1))
    return f"{stage:>8} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def parse_event(line: str) -> dict | None:
    """The event of one output line, or None for a line that is not a JSON event (e.g. a library log)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


def parse_events(lines) -> list[dict]:
    """Parses JSON-line events, skipping lines that are not JSON objects (e.g. library logs)."""
    return [e for e in map(parse_event, lines) if e is not None]
