"""Progress events: JSON lines that the GUI, the CLI and the tests all read the same way."""

import io
import json

from ivdseg.progress import Reporter, parse_events


def test_jsonl_round_trip_and_nan_becomes_null():
    buf = io.StringIO()
    r = Reporter("jsonl", buf)
    r.progress(3, 10, "infer")
    r.emit("epoch", epoch=1, loss=0.5, val_dice=float("nan"))
    events = parse_events(["some library log line", *buf.getvalue().splitlines(), "{broken"])
    assert events == [{"event": "progress", "done": 3, "total": 10, "stage": "infer"},
                      {"event": "epoch", "epoch": 1, "loss": 0.5, "val_dice": None}]
    json.loads(buf.getvalue().splitlines()[1])  # strict JSON: no NaN token


def test_text_mode_is_readable_and_none_is_silent():
    buf = io.StringIO()
    Reporter("text", buf).progress(2, 4, "infer")
    assert buf.getvalue() == "[infer] 2/4\n"
    buf = io.StringIO()
    Reporter("none", buf).message("hidden")
    assert buf.getvalue() == ""
