"""The worker process as Slicer runs it: through a launcher that forwards no signal (PythonSlicer is a CTKAppLauncher
that starts python-real as its child), stopped by a stop file or by the closing of its stdin, killed as a tree.

The launcher stand-in below does what ctkAppLauncher does for PythonSlicer: it starts the real interpreter as its
child with its own stdin, stdout and stderr (QProcess::ForwardedChannels and ForwardedInputChannel), waits for
it, and forwards nothing: a SIGTERM ends the stand-in alone.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_slicer_core

from ivdseg.data.phantom import synthetic_spine_volume
from ivdseg.io.volumes import write_volume
from ivdseg.stop import EXIT_CANCELLED

require_slicer_core()

STANDIN = '''#!{python}
import os, subprocess, sys
child = subprocess.Popen([{python!r}, *sys.argv[1:]])  # the real interpreter; signals are not forwarded
with open(os.environ["STANDIN_CHILD_PID_FILE"], "w") as fh:
    fh.write(str(child.pid))
sys.exit(child.wait())
'''


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    """(path of a PythonSlicer-like launcher, a function returning the pid of the real worker it started)."""
    path = tmp_path / "PythonSlicer"
    path.write_text(STANDIN.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("STANDIN_CHILD_PID_FILE", str(pid_file))

    def child_pid():
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the launcher did not start the worker"
            time.sleep(0.02)
        return int(pid_file.read_text())

    return str(path), child_pid


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for its parent to reap it counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.fixture
def volume_file(tmp_path):
    """150 sagittal slices: several seconds of work at one slice a batch, so a job is still running while a test
    stops it, however busy the machine."""
    from ivdseg.io.geometry import Volume

    image, _ = synthetic_spine_volume()
    return write_volume(Volume(np.concatenate([image.array] * 10), image.ijk_to_ras), tmp_path / "spine.nrrd")


def _segment_job(volume_file, out, python=None):
    from IVDSegmentationLib.worker import WorkerJob

    return WorkerJob(["segment", volume_file, "-o", out, "--device", "cpu", "--batch-size", "1",
                      "--progress", "jsonl"], python=python)


def _until_working(job):
    events = []
    deadline = time.monotonic() + 120
    while not any(e["event"] == "progress" for e in events):
        assert not job.finished and time.monotonic() < deadline, job.log
        events += job.poll()
        time.sleep(0.02)


def _cancel_and_time(job) -> float:
    """Seconds from cancel() until the job is over."""
    t0 = time.monotonic()
    job.cancel()
    while not job.finished:
        time.sleep(0.01)
    return time.monotonic() - t0


def _ends_within(pid: int, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def test_cancel_reaches_the_real_worker_through_the_launcher(launcher, volume_file, tmp_path):
    python, child_pid = launcher
    job = _segment_job(volume_file, tmp_path / "labels.nrrd", python)
    _until_working(job)
    worker = child_pid()
    assert _alive(worker)
    assert _cancel_and_time(job) < 1.0
    assert _ends_within(worker), "the real worker outlived the launcher"
    assert not (tmp_path / "labels.nrrd").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_stop_file_alone_stops_the_worker_with_nothing_written(launcher, volume_file, tmp_path):
    """No kill: the worker reads the stop file between batches and leaves by itself, through the launcher."""
    python, child_pid = launcher
    job = _segment_job(volume_file, tmp_path / "labels.nrrd", python)
    _until_working(job)
    job.stopFile.touch()  # what requestStop does first; the stdin stays open
    assert job.wait(timeout=10) == EXIT_CANCELLED and not job.killed
    assert any(e["event"] == "cancelled" for e in job.events)
    assert not (tmp_path / "labels.nrrd").exists()


def test_closing_stdin_alone_stops_the_worker(launcher, volume_file, tmp_path):
    """If Slicer dies, the worker's stdin closes: the worker must stop by itself, not keep the GPU as an orphan."""
    python, child_pid = launcher
    job = _segment_job(volume_file, tmp_path / "labels.nrrd", python)
    _until_working(job)
    job.process.stdin.close()
    assert job.wait(timeout=10) == EXIT_CANCELLED and not job.killed
    assert not _alive(child_pid())


def _orphan(launcher, volume_file, tmp_path):
    """A working job whose launcher got a SIGTERM: (the job, the pid of the real worker, running on)."""
    python, child_pid = launcher
    job = _segment_job(volume_file, tmp_path / "labels.nrrd", python)
    _until_working(job)
    worker = child_pid()
    job.process.terminate()
    job.process.wait(timeout=5)
    return job, worker


def test_sigterm_to_the_launcher_does_not_reach_the_worker(launcher, volume_file, tmp_path):
    """The defect the stop file fixes: a signal ends the launcher only, and the worker would run on."""
    job, worker = _orphan(launcher, volume_file, tmp_path)
    time.sleep(0.3)
    assert _alive(worker)
    job.kill()  # the tree kill reaches it: the group outlives its leader
    assert _ends_within(worker)


def test_cancel_ends_a_worker_whose_launcher_died(launcher, volume_file, tmp_path):
    """The launcher ended by someone else: the real worker runs on as an orphan holding the pipes; Cancel must
    still end it, within the grace period, not wait for it."""
    job, worker = _orphan(launcher, volume_file, tmp_path)
    assert _cancel_and_time(job) < 1.5
    assert _ends_within(worker)


@pytest.mark.slow
def test_training_stop_through_the_launcher_packages_the_best_model(launcher, tmp_path):
    from ivdseg.data.export import ExportOptions, RawCase, export_dataset
    from IVDSegmentationLib.training import TrainingLogic

    python, _ = launcher
    cases = []
    for n in range(3):
        image, truth = synthetic_spine_volume(seed=n)
        cases.append(RawCase(patient=f"p{n}", source="phantom", image=image.array, label=truth.array))
    export_dataset(cases, ["intervertebral disc"], tmp_path / "ds", ExportOptions(sizes=(64,), val_fraction=0.34))
    job = TrainingLogic(python).startTraining(tmp_path / "ds", tmp_path / "run", size=64, epochs=200, batchSize=4,
                                              name="stopped", extraArgs=["--depth", "3", "--base-filters", "8"])
    deadline = time.monotonic() + 600
    while not any(e["event"] == "epoch" for e in job.events):
        assert not job.finished and time.monotonic() < deadline, job.log[-3000:]
        job.poll()
        time.sleep(0.1)
    TrainingLogic.stopTraining(job)
    assert job.wait(timeout=600) == 0, job.log[-3000:]
    done = [e for e in job.events if e["event"] == "done"]
    assert done and done[0]["stopped"] is True and done[0]["epochs_run"] < 200
    package = TrainingLogic.packageOf(job, tmp_path / "run")
    card = json.loads((package / "model.json").read_text())
    assert card["training"]["best_epoch"] >= 1
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))  # no save was interrupted


# ------------------------------------------------------------------ environment and process options
def test_a_foreign_python_gets_the_startup_environment_without_the_launcher_variables(monkeypatch, tmp_path):
    from IVDSegmentationLib import worker

    slicer_env = {"PYTHONHOME": "/slicer/lib/Python", "PYTHONPATH": "/slicer/lib/site", "PYTHONNOUSERSITE": "1",
                  "PATH": "/slicer/bin:/usr/bin", "HOME": "/home/u"}
    startup = {"PATH": "/usr/bin", "HOME": "/home/u", "PYTHONPATH": "/user/own"}
    monkeypatch.setattr(worker, "_startupEnvironment", lambda: dict(startup))
    for key, value in slicer_env.items():
        monkeypatch.setenv(key, value)
    foreign = worker.workerEnvironment(str(tmp_path / "gpu-env" / "bin" / "python"))
    assert "PYTHONHOME" not in foreign and "PYTHONNOUSERSITE" not in foreign
    assert foreign["PATH"] == "/usr/bin"
    assert foreign["PYTHONPATH"] == str(worker.CORE_DIR)  # the user's own PYTHONPATH is a launcher variable too
    own = worker.workerEnvironment(None)
    assert own["PYTHONHOME"] == "/slicer/lib/Python" and own["PYTHONPATH"].startswith(str(worker.CORE_DIR))


def test_a_foreign_python_is_probed_in_that_environment(monkeypatch, tmp_path):
    from IVDSegmentationLib import dependencies, worker

    seen = {}

    def run(command, **kwargs):
        seen.update(kwargs, command=command)
        return subprocess.CompletedProcess(command, 0, stdout='["onnxruntime"]\n', stderr="")

    monkeypatch.setattr(worker, "_startupEnvironment", lambda: {"PATH": "/usr/bin"})
    monkeypatch.setenv("PYTHONHOME", "/slicer/lib/Python")
    monkeypatch.setattr(subprocess, "run", run)
    python = str(tmp_path / "other" / "python")
    assert dependencies.missingInferencePackages(python) == ["onnxruntime>=1.18"]
    assert seen["command"][0] == python and "PYTHONHOME" not in seen["env"]
    assert seen["start_new_session"] is True and seen["stdin"] == subprocess.DEVNULL


def test_windows_hides_the_console_and_separates_the_process_group(monkeypatch):
    from IVDSegmentationLib import worker

    class StartupInfo:
        def __init__(self):
            self.dwFlags, self.wShowWindow = 0, 1

    monkeypatch.setattr(subprocess, "STARTUPINFO", StartupInfo, raising=False)
    options = worker.processOptions("nt")
    assert options["creationflags"] & 0x08000000  # CREATE_NO_WINDOW
    assert options["creationflags"] & 0x00000200  # CREATE_NEW_PROCESS_GROUP
    assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0  # SW_HIDE
    assert worker.processOptions("posix") == {"start_new_session": True}


def test_pip_gets_a_list_that_keeps_windows_paths(monkeypatch):
    """slicer.util.pip_install splits a string POSIX-style, which eats backslashes: it must get a list."""
    import types

    from IVDSegmentationLib import dependencies

    calls = []
    fake = types.SimpleNamespace(util=types.SimpleNamespace(pip_install=calls.append))
    monkeypatch.setitem(sys.modules, "slicer", fake)
    monkeypatch.setattr(dependencies, "missingInferencePackages", lambda python=None: [r"C:\wheels\onnxruntime.whl"])
    dependencies.installInferencePackages()
    (args,) = calls
    assert isinstance(args, list) and args[0] == r"C:\wheels\onnxruntime.whl" and args[1] == "-c"
    assert not Path(args[2]).exists()  # the numpy constraints file is removed afterwards

    ensured = []
    fake.packaging = types.SimpleNamespace(pip_install=lambda requirements, constraints=None: ensured.append(
        (requirements, Path(constraints).read_text())))
    dependencies.installInferencePackages()
    assert ensured[0][0] == [r"C:\wheels\onnxruntime.whl"] and ensured[0][1] == f"numpy=={np.__version__}\n"


def test_the_monitor_reads_events_that_arrive_with_the_end():
    """A "done" that arrives between reading the events and seeing the end must not be lost."""
    from IVDSegmentationLib.jobs import JobMonitor

    class Job:
        def __init__(self):
            self.queue, self.ended, self.polls = [[{"event": "progress"}], [{"event": "done"}]], False, 0

        @property
        def finished(self):
            return self.ended

        def poll(self):
            self.polls += 1
            new = self.queue.pop(0) if self.queue else []
            if self.polls == 1:
                self.ended = True  # the worker ends right after the first poll, its last event still in the pipe
            return new

    seen, finished = [], []
    monitor = JobMonitor(Job(), seen.append, finished.append)
    assert monitor.tick() is False and seen == [{"event": "progress"}] and not finished
    assert monitor.tick() is True and seen[-1] == {"event": "done"} and len(finished) == 1
    assert monitor.tick() is True and len(finished) == 1


def test_a_worker_python_that_does_not_exist_is_one_sentence(tmp_path):
    from IVDSegmentationLib.worker import WorkerJob

    with pytest.raises(ValueError, match="could not be started"):
        WorkerJob(["series", tmp_path], python=str(tmp_path / "no-python"))


def test_stop_file_present_at_start_cancels_segment_with_nothing_written(volume_file, tmp_path):
    env = {**os.environ, "IVDSEG_STOP_FILE": str(tmp_path / "stop"), "PYTHONPATH": str(Path(__file__).parents[1]
                                                                                         / "IVDSegmentation")}
    (tmp_path / "stop").touch()
    out = subprocess.run([sys.executable, "-m", "ivdseg", "segment", str(volume_file), "-o", str(tmp_path / "l.nrrd"),
                          "--progress", "jsonl"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == EXIT_CANCELLED, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["event"] == "cancelled"
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "l.nrrd").exists()


def test_slicer_installs_the_same_keras_floor_as_the_package():
    """What the training panel installs into Slicer's Python must exclude the Keras releases with a safe_mode
    bypass, exactly as pyproject.toml does."""
    import tomllib

    from IVDSegmentationLib import dependencies

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    keras = [d for d in project["project"]["dependencies"] if d.startswith("keras")]
    assert keras == [dependencies.TRAINING["keras"]] == ["keras>=3.14.0"]
