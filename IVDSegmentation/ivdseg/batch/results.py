"""The batch's one results table, rebuilt from the journal after every run (so a resumed batch's table holds the
series of every run): ``OUTDIR/results.csv``, and ``results.parquet`` when pyarrow is installed.

Without levels: one row per series and class (its volume in mL). With levels: one row per disc, with the
measurements of ``segment --table`` (the series' ``<name>_discs.csv`` beside its output). The patient column holds
the PatientID, or its keyed pseudonym with ``--pseudonymize`` (the dataset export's hash: the same key gives the same
pseudonym in both).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ivdseg.io.atomic import atomic_write

SERIES_COLUMNS = ("series", "input", "output", "patient")


def result_rows(states: dict[str, dict]) -> tuple[list[str], list[dict]]:
    """(columns, rows) of the done series of a journal, in key order."""
    rows, extra_columns = [], []
    for key in sorted(states):
        state = states[key]
        if state.get("state") != "done":
            continue
        base = {"series": key, "input": state.get("input", ""), "output": state.get("output", ""),
                "patient": state.get("patient_id", "")}
        table = state.get("table")
        if table and Path(table).is_file():
            with open(table, newline="", encoding="utf-8") as f:
                for disc in csv.DictReader(f):
                    for column in disc:
                        if column not in extra_columns and column not in SERIES_COLUMNS:
                            extra_columns.append(column)
                    rows.append({**base, **disc})
        else:
            for name, ml in (state.get("volumes_ml") or {}).items():
                rows.append({**base, "class": name, "volume_ml": ml})
    if any("class" in r for r in rows):
        extra_columns = ["class", "volume_ml", *[c for c in extra_columns if c not in ("class", "volume_ml")]]
    return [*SERIES_COLUMNS, *extra_columns], rows


def write_results(outdir, states: dict[str, dict]) -> list[Path]:
    """Writes ``results.csv`` (and ``results.parquet`` with pyarrow) atomically; returns the files written."""
    outdir = Path(outdir)
    columns, rows = result_rows(states)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [atomic_write(outdir / "results.csv", lambda t: Path(t).write_text(text.getvalue(), encoding="utf-8"),
                            overwrite=True)]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.table({c: pa.array(_column(c, [r.get(c) for r in rows]),
                                  pa.string() if c in SERIES_COLUMNS else None) for c in columns})
    written.append(atomic_write(outdir / "results.parquet", lambda t: pq.write_table(table, str(t)), overwrite=True))
    return written


def _column(name: str, values: list) -> list:
    """A column for parquet: numbers where every cell that is not empty is one, text otherwise and always for the
    series' identifiers (a PatientID of digits stays text)."""
    cells = [None if v is None or v == "" else v for v in values]
    if name not in SERIES_COLUMNS:
        try:
            return [None if c is None else float(c) for c in cells]
        except (TypeError, ValueError):
            pass
    return [None if c is None else str(c) for c in cells]
