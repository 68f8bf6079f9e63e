"""ivdseg batch: a folder tree or a manifest as one resumable batch, with a journal and one results table.

Real processes throughout: the batch command in a subprocess killed with SIGKILL mid-way, local worker processes,
and a local Dask cluster of processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from dicom_builders import _series

from ivdseg import cli
from ivdseg.batch.journal import JOURNAL_NAME, Journal, read_journal
from ivdseg.batch.runner import BatchSummary, core_shares, run_batch
from ivdseg.data.phantom import synthetic_spine_slices
from ivdseg.errors import IvdsegError
from ivdseg.io.geometry import stack_volume
from ivdseg.io.volumes import write_volume


def _tree(root: Path, n: int, bad_at: int | None = None) -> Path:
    """``n`` small synthetic spines as NIfTI (vol00 ...), one of them (``bad_at``) an unreadable file."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        path = root / f"vol{k:02d}.nii.gz"
        if k == bad_at:
            path.write_bytes(b"not a volume")
            continue
        image, _ = synthetic_spine_slices(n_slices=5, height=96, width=80, levels=3, seed=k % 3)
        write_volume(stack_volume(image, (1.0, 1.0), 3.0), path)
    return root


def _run(args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "ivdseg", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def _states(outdir: Path) -> dict:
    return read_journal(outdir / JOURNAL_NAME)[1]


def test_a_bad_series_is_recorded_the_rest_done_and_a_rerun_skips_them(tmp_path, capsys):
    source = _tree(tmp_path / "in", 4, bad_at=1)
    out = tmp_path / "out"
    args = ["batch", source, "-o", out, "--no-tta", "--progress", "jsonl"]
    assert cli.main([str(a) for a in args]) == 3  # some series failed
    states = _states(out)
    assert {k: s["state"] for k, s in states.items()} == {"vol00": "done", "vol01": "failed", "vol02": "done",
                                                          "vol03": "done"}
    assert "vol01.nii.gz" in states["vol01"]["reason"] and "\n" not in states["vol01"]["reason"]
    for key in ("vol00", "vol02", "vol03"):
        assert (out / f"{key}.nii.gz").is_file() and len(states[key]["sha256"]) == 64
    capsys.readouterr()
    # nothing left to do: the failed one waits for --retry-failed, and the exit status still says it failed
    assert cli.main([str(a) for a in args]) == 3
    printed = capsys.readouterr().out
    assert "1 series failed in an earlier run" in printed
    done = [json.loads(line) for line in printed.splitlines() if '"event": "done"' in line][-1]
    assert (done["done"], done["failed"], done["skipped"]) == (0, 0, 4)
    (source / "vol01.nii.gz").unlink()
    _tree(tmp_path / "fixed", 2)
    (tmp_path / "fixed" / "vol01.nii.gz").rename(source / "vol01.nii.gz")
    assert cli.main([str(a) for a in [*args, "--retry-failed"]]) == 0
    assert _states(out)["vol01"]["state"] == "done"
    # an output changed since it was recorded is not done any more
    (out / "vol00.nii.gz").write_bytes(b"tampered")
    assert not Journal(out, read_journal(out / JOURNAL_NAME)[0]).done("vol00")


def test_the_results_table_agrees_with_per_series_runs(tmp_path):
    source = _tree(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert cli.main([str(a) for a in ["batch", source, "-o", out, "--no-tta", "--progress", "none"]]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["series"], r["class"]) for r in rows] == [("vol00", "intervertebral disc"),
                                                           ("vol01", "intervertebral disc")]
    for row in rows:
        single = tmp_path / f"{row['series']}.nii.gz"
        assert cli.main([str(a) for a in ["segment", source / f"{row['series']}.nii.gz", "-o", single, "--no-tta",
                                          "--progress", "none"]]) == 0
        volumes = json.loads(single.with_name(single.name + ".json").read_text())["volumes_ml"]
        assert float(row["volume_ml"]) == pytest.approx(volumes["intervertebral disc"])
        assert (out / f"{row['series']}.nii.gz").read_bytes() == single.read_bytes()
    pyarrow = pytest.importorskip("pyarrow.parquet")
    table = pyarrow.read_table(out / "results.parquet").to_pylist()
    assert [r["volume_ml"] for r in table] == [float(r["volume_ml"]) for r in rows]


def test_dicom_series_are_named_by_uid_and_patients_pseudonymised(tmp_path):
    source = tmp_path / "in"
    _series(source / "a", series_uid="1.2.826.0.1.7", PatientID="SECRET-77")
    _series(source / "b" / "deeper", series_uid="1.2.826.0.1.8", PatientID="SECRET-78")
    out, key = tmp_path / "out", tmp_path / "pseudonym.key"
    assert cli.main([str(a) for a in ["batch", source, "-o", out, "--no-tta", "--pseudonymize", key,
                                      "--progress", "none"]]) == 0
    assert (out / "1.2.826.0.1.7.nii.gz").is_file() and (out / "1.2.826.0.1.8.nii.gz").is_file()
    text = (out / "results.csv").read_text() + (out / JOURNAL_NAME).read_text()
    assert "SECRET" not in text
    from ivdseg.data.export import pseudonym

    patients = {r["patient"] for r in csv.DictReader(open(out / "results.csv", newline=""))}
    assert patients == {pseudonym(key.read_bytes(), "archive", f"SECRET-7{n}") for n in (7, 8)}
    # without --pseudonymize the same folder is another batch: refused, then started afresh with --overwrite
    plain = ["batch", source, "-o", out, "--no-tta", "--progress", "none"]
    assert cli.main([str(a) for a in plain]) == 2
    assert cli.main([str(a) for a in [*plain, "--overwrite"]]) == 0
    assert {r["patient"] for r in csv.DictReader(open(out / "results.csv", newline=""))} == {"SECRET-77",
                                                                                               "SECRET-78"}


def test_another_models_journal_is_refused_unless_overwrite(tmp_path, capsys):
    source = _tree(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert cli.main([str(a) for a in ["batch", source, "-o", out, "--no-tta", "--progress", "none"]]) == 0
    capsys.readouterr()
    other = ["batch", source, "-o", out, "--model", "ivd-lumbosacral-2d", "--progress", "none"]
    assert cli.main([str(a) for a in other]) == 2
    err = capsys.readouterr().err
    assert "journal of another batch" in err and "ivd-lumbosacral-2d" in err
    assert cli.main([str(a) for a in [*other, "--overwrite"]]) == 0
    assert read_journal(out / JOURNAL_NAME)[0]["model"] == "ivd-lumbosacral-2d"


def test_a_manifest_names_the_outputs_and_levels_give_one_row_per_disc(tmp_path):
    from conftest import require_data

    case = require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    (tmp_path / "manifest.csv").write_text(f"input,output\n{case},site1/case25.seg.nrrd\n")
    out = tmp_path / "out"
    assert cli.main([str(a) for a in ["batch", tmp_path / "manifest.csv", "-o", out, "--levels", "--no-tta",
                                      "--progress", "none"]]) == 0
    assert (out / "site1" / "case25.seg.nrrd").is_file() and (out / "site1" / "case25_discs.csv").is_file()
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["level"] for r in rows] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert all(r["series"] == "site1/case25.seg.nrrd" and float(r["volume_ml"]) > 0 for r in rows)


def test_a_killed_batch_loses_only_the_series_in_flight(tmp_path):
    source = _tree(tmp_path / "in", 12)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "ivdseg", "batch", str(source), "-o", str(out), "--no-tta",
                             "--progress", "none"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            journal = out / JOURNAL_NAME
            if journal.exists() and sum('"done"' in line for line in journal.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and its workers, without a chance to clean up
    finally:
        proc.wait(timeout=60)
    before = {k for k, s in _states(out).items() if s["state"] == "done"}
    assert 3 <= len(before) < 12, "the batch must be killed mid-way"
    rerun = _run(["batch", source, "-o", out, "--no-tta", "--progress", "jsonl"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done = [json.loads(line) for line in rerun.stdout.splitlines() if line.startswith('{"event": "done"')][-1]
    assert done["skipped"] == len(before) and done["done"] == 12 - len(before) and done["failed"] == 0
    assert {k for k, s in _states(out).items() if s["state"] == "done"} == {f"vol{k:02d}" for k in range(12)}
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12


def test_two_local_workers_and_their_cores():
    assert core_shares(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert core_shares(3, [0, 1]) == [[0], [1], [0]]
    assert core_shares(1, [5, 7]) == [[5, 7]]


def test_a_local_dask_cluster_runs_the_batch(tmp_path):
    distributed = pytest.importorskip("distributed")
    source = _tree(tmp_path / "in", 3, bad_at=2)
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        code = cli.main([str(a) for a in ["batch", source, "-o", out, "--scheduler", c.scheduler_address,
                                          "--no-tta", "--progress", "none"]])
    assert code == 3
    assert {k: s["state"] for k, s in _states(out).items()} == {"vol00": "done", "vol01": "done", "vol02": "failed"}


def test_an_unreachable_scheduler_starts_nothing(tmp_path, capsys):
    pytest.importorskip("distributed")
    source = _tree(tmp_path / "in", 1)
    code = cli.main([str(a) for a in ["batch", source, "-o", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9",
                                      "--progress", "none"]])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "nothing was started" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written: no folder, no journal


class _InProcessPool:
    """run_item in this process, for the failure paths that need monkeypatching."""

    workers = 1

    def submit(self, item, settings):
        import concurrent.futures as cf

        from ivdseg.batch.worker import run_item

        future = cf.Future()
        future.set_result(run_item(item, settings))
        return future

    def as_completed(self, futures):
        return iter(futures)

    def restart(self):
        pass

    def close(self, cancel=False):
        pass


class _CrashingPool(_InProcessPool):
    """A pool whose worker process dies whenever it meets the series ``killer`` (its future and every other one in
    flight then raise BrokenProcessPool, as a real process pool's do)."""

    workers = 2

    def __init__(self, killer):
        self.killer, self.restarts, self.batch = killer, 0, []

    def submit(self, item, settings):
        import concurrent.futures as cf

        future = cf.Future()
        self.batch.append((future, item))
        if item["key"] == self.killer:
            for f, _ in self.batch:
                if not f.done():
                    f.set_exception(cf.process.BrokenProcessPool("a worker died"))
        else:
            future.set_result({"key": item["key"], "state": "done", "output": item["output"], "sha256": "0" * 64,
                               "volumes_ml": {}, "patient_id": ""})
        return future

    def restart(self):
        self.restarts += 1
        self.batch = []


def test_a_full_disk_fails_the_series_in_flight_and_stops_the_batch(tmp_path, monkeypatch):
    import errno

    from ivdseg.batch.items import find_items
    from ivdseg.models.package import resolve_model

    source = _tree(tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    calls = []

    def full(volume, path, overwrite=False):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("ivdseg.inference.segment.write_volume", full)
    journal = Journal(out, {"model": "m", "model_version": "1", "output_format": ".nii.gz", "levels": False,
                            "pseudonymized": False})
    items = [i.to_dict() for i in find_items(source, out)]
    summary = run_batch(items, journal, {"model": str(resolve_model(None)), "no_tta": True}, _InProcessPool())
    assert isinstance(summary, BatchSummary)
    # the series in flight (two per worker) fail, nothing new starts
    assert (summary.failed, summary.done, summary.left) == (2, 0, 1) and "disk is full" in summary.stopped
    assert {k: s["state"] for k, s in _states(out).items()} == {"vol00": "failed", "vol01": "failed"}
    assert not any(p.name.endswith(".nii.gz") for p in out.iterdir())
    with pytest.raises(IvdsegError):
        Journal(out, {"model": "other"})


def test_a_full_disk_failure_is_done_again_by_the_rerun_it_asks_for(tmp_path, capsys):
    source = _tree(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    from ivdseg.batch.journal import sha256_of
    from ivdseg.models.package import read_card, resolve_model

    bundled = read_card(resolve_model(None))  # the journal of an earlier run with the bundled model, as it is now
    journal = Journal(out, {"model": "ivd-disc-2d", "model_version": bundled["version"], "output_format": ".nii.gz",
                            "model_sha256": sha256_of(resolve_model(None) / "model.onnx"),
                            "levels": False, "pseudonymized": False})
    journal.record({"key": "vol00", "state": "failed", "reason": "The disk is full.", "disk_full": True})
    journal.record({"key": "vol01", "state": "failed", "reason": "Not a volume."})
    assert not journal.failed("vol00") and journal.failed("vol01")
    assert cli.main([str(a) for a in ["batch", source, "-o", out, "--no-tta", "--progress", "jsonl"]]) == 3
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"event": "done"' in line][-1]
    assert (done["done"], done["skipped"]) == (1, 1)  # vol00 done again; vol01 waits for --retry-failed
    assert _states(out)["vol00"]["state"] == "done"


def test_a_journal_line_cut_by_a_kill_is_healed_before_the_next_record(tmp_path):
    header = {"model": "m", "model_version": "1", "output_format": ".nii.gz", "levels": False, "pseudonymized": False}
    journal = Journal(tmp_path, header)
    journal.record({"key": "a", "state": "done", "output": "x", "sha256": "0"})
    with open(tmp_path / JOURNAL_NAME, "a") as f:
        f.write('{"key": "b", "state": "do')  # the kill came here
    journal = Journal(tmp_path, header)
    assert set(journal.states) == {"a"}
    journal.record({"key": "c", "state": "failed", "reason": "r"})
    assert set(read_journal(tmp_path / JOURNAL_NAME)[1]) == {"a", "c"}
    assert set(Journal(tmp_path, header).states) == {"a", "c"}


def test_a_series_that_kills_its_worker_fails_alone_and_the_others_are_done(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    journal = Journal(out, {"model": "m"})
    items = [{"key": k, "input": k, "output": str(out / f"{k}.nii.gz")} for k in ("a", "b", "c", "d")]
    pool = _CrashingPool(killer="b")
    summary = run_batch(items, journal, {}, pool)
    states = {k: s["state"] for k, s in journal.states.items()}
    assert states == {"a": "done", "b": "failed", "c": "done", "d": "done"}
    assert "died" in journal.states["b"]["reason"] and summary.failed == 1 and summary.done == 3
    assert pool.restarts == 2  # once with the others in flight, once alone: then it is known


def test_outputs_inside_the_input_tree_are_not_inputs(tmp_path):
    from ivdseg.batch.items import find_items

    source = _tree(tmp_path / "data", 1)
    out = source / "seg"
    assert cli.main([str(a) for a in ["batch", source, "-o", out, "--no-tta", "--progress", "none"]]) == 0
    assert [i.key for i in find_items(source, out)] == ["vol00"]
    relative = find_items(source, out)[0]
    assert Path(relative.output).is_absolute() and Path(relative.input).is_absolute()


def test_a_changed_input_is_done_again(tmp_path, capsys):
    source = _tree(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [str(a) for a in ["batch", source, "-o", out, "--no-tta", "--progress", "jsonl"]]
    assert cli.main(args) == 0
    image, _ = synthetic_spine_slices(n_slices=6, height=96, width=80, levels=3, seed=7)
    write_volume(stack_volume(image, (1.0, 1.0), 3.0), source / "vol01.nii.gz", overwrite=True)
    capsys.readouterr()
    assert cli.main(args) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"event": "done"' in line][-1]
    assert (done["done"], done["skipped"]) == (1, 1)
