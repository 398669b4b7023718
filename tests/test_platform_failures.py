"""Failure handling: a NaN trial fails alone, and a killed driver's study resumes without duplicates."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TRIAL_PROCESS
from platform_helpers import ablab_env, local_store, logged_epochs, study_runs, write_study

pytestmark = pytest.mark.slow


def _runs(out, study):
    return study_runs(local_store(out, study), study)[1]


def test_nan_loss_fails_that_trial_alone_and_a_retry_runs_it_again_in_its_run(synthetic_root, tmp_path, executor):
    """A trial that diverges fails alone, with its reason in MLflow. Once the study is fixed, `ablab resume
    --retry-failed` runs that trial alone again, in the same MLflow run (FINISHED, the failure kept as a tag),
    with a tracking URI that replaces the stale one in launch.json."""
    # Three trials on two CPUs: the third only starts if finished trials give their CPUs back.
    study = write_study(tmp_path / "nan_study.yaml", synthetic_root, trials=[
        {"name": "ok", "set": {}},
        {"name": "diverges", "set": {"train.lr": 1.0e12, "train.grad_clip": None, "train.warmup_iters": 0}},
        {"name": "ok_too", "set": {"model.quality.branch": "iou"}}],
        layout=None, resources={"workers": 1, "cpus_per_worker": 1, "executor": executor})
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "run", str(study)], capture_output=True, text=True,
                       env=ablab_env(tmp_path / "out"), timeout=900)
    assert r.returncode == 1, r.stderr[-3000:]
    runs = {x.data.tags["ablab.trial"]: x for x in _runs(tmp_path / "out", "nan_study") if x.data.tags["ablab.role"] == "trial"}
    assert runs["ok"].info.status == "FINISHED" and "cls/AP" in runs["ok"].data.metrics
    assert runs["ok_too"].info.status == "FINISHED"
    assert runs["diverges"].info.status == "FAILED"
    assert "NonFiniteLoss" in runs["diverges"].data.tags["ablab.error"]
    assert "non-finite loss" in runs["diverges"].data.tags["ablab.error"]
    # A failed study keeps Ray's logs for a look, and says where.
    kept = Path(re.search(r"ray: its logs are kept in (\S+)", r.stderr).group(1))
    assert kept.is_dir() and not (kept.parents[1] / "auth_token").exists()
    shutil.rmtree(kept.parents[1])

    finished_at = {t: runs[t].info.end_time for t in ("ok", "ok_too")}
    # The fix: a sane lr. The MLflow server "moved": launch.json names one that is gone.
    write_study(study, synthetic_root, layout=None, trials=[
        {"name": "ok", "set": {}}, {"name": "diverges", "set": {"train.lr": 0.01}},
        {"name": "ok_too", "set": {"model.quality.branch": "iou"}}],
        resources={"workers": 1, "cpus_per_worker": 1, "executor": executor})
    launch = tmp_path / "out" / "nan_study" / "smoke" / "launch.json"
    store = json.loads(launch.read_text())["tracking_uri"]
    launch.write_text(json.dumps({**json.loads(launch.read_text()), "tracking_uri": "http://127.0.0.1:9"}))
    cmd = [sys.executable, "-m", "ablab.cli", "resume", str(study), "--retry-failed"]
    stale = subprocess.run(cmd, capture_output=True, text=True, env=ablab_env(tmp_path / "out"), timeout=60)
    assert stale.returncode == 2 and "launch.json: --tracking-uri replaces it" in stale.stderr, stale.stderr
    r = subprocess.run(cmd + ["--tracking-uri", store], capture_output=True, text=True,
                       env=ablab_env(tmp_path / "out"), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(launch.read_text())["tracking_uri"] == store
    trial_runs = [x for x in _runs(tmp_path / "out", "nan_study") if x.data.tags["ablab.role"] == "trial"]
    assert len(trial_runs) == 3  # retried in its own run, not beside it
    retried = {x.data.tags["ablab.trial"]: x for x in trial_runs}["diverges"]
    assert retried.info.status == "FINISHED" and "cls/AP" in retried.data.metrics
    assert "ablab.error" not in retried.data.tags and retried.data.tags["ablab.attempts"] == "2"
    assert "NonFiniteLoss" in json.loads(retried.data.tags["ablab.previous_errors"])[0]
    # the two trials that had finished were not run again: their runs were not reopened
    assert {t: x.info.end_time for t, x in {x.data.tags["ablab.trial"]: x for x in trial_runs}.items()
            if t != "diverges"} == finished_at


# A resume from either executor's checkpoint after a kill; the preemption's orderly stop on Train, the executor
# with more to stop (its controller and worker group): the fourth pairing would add a minute and no new path.
@pytest.mark.parametrize(("stop", "executor"), [("SIGKILL", "tune"), ("SIGKILL", "train"), ("SIGTERM", "train")])
def test_resume_after_the_driver_is_killed_or_preempted(stop, synthetic_root, tmp_path, executor):
    """SIGKILL: the driver and its cluster die at once. SIGTERM (a preempted node, a scheduler's stop): the
    study stops itself within 30 s, the stopped trial's run is left KILLED (interrupted), and no Ray process
    outlives it. Either way `ablab resume` finishes the study: one run per trial, every epoch logged once."""
    import psutil

    study = write_study(tmp_path / "resumable.yaml", synthetic_root, epochs=3, max_images=24, trials=[
        {"name": "short", "set": {"train.epochs": 1}}, {"name": "long", "set": {}}],
        resources={"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1, "executor": executor}, layout=None)
    env = ablab_env(tmp_path / "out")
    driver = subprocess.Popen([sys.executable, "-m", "ablab.cli", "run", str(study)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"), start_new_session=True)
    deadline = time.time() + 600
    # Once the long trial's first epoch is in MLflow, Train has registered that epoch's checkpoint.
    while time.time() < deadline and not logged_epochs(tmp_path / "out", "resumable", "long"):
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.3)
    assert logged_epochs(tmp_path / "out", "resumable", "long"), "the long trial never reported an epoch"
    started = psutil.Process(driver.pid).create_time()
    if stop == "SIGKILL":
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded cluster it started
        driver.wait()
    else:
        t0 = time.time()
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 130, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() - t0 < 30, f"took {time.time() - t0:.0f}s to stop"
        time.sleep(2)
        left = [p.name() for p in psutil.process_iter(["name", "create_time"])
                if p.info["name"] in ("raylet", "gcs_server") and p.info["create_time"] >= started]
        assert not left, left
        assert "`ablab resume" in (tmp_path / "first.log").read_text()
    trials = {x.data.tags["ablab.trial"]: x for x in _runs(tmp_path / "out", "resumable")
              if x.data.tags["ablab.role"] == "trial"}
    assert trials["short"].info.status == "FINISHED"
    short_finished_at = trials["short"].info.end_time
    if stop == "SIGKILL":
        assert trials["long"].info.status == "RUNNING"
    else:
        assert trials["long"].info.status == "KILLED" and trials["long"].data.tags["ablab.interrupted"] == "true"

    r = subprocess.run([sys.executable, "-m", "ablab.cli", "resume", str(study)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = _runs(tmp_path / "out", "resumable")
    trials = [x for x in runs if x.data.tags["ablab.role"] == "trial"]
    assert sorted(x.data.tags["ablab.trial"] for x in trials) == ["long", "short"]  # one run per trial
    assert all(x.info.status == "FINISHED" for x in runs)  # no orphan left RUNNING
    short_run = next(x for x in trials if x.data.tags["ablab.trial"] == "short")
    assert short_run.info.end_time == short_finished_at  # the finished trial was not run again
    long_run = next(x for x in trials if x.data.tags["ablab.trial"] == "long")
    assert int(long_run.data.tags["ablab.resumed_at_epoch"]) >= 1  # it continued from its checkpoint
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'resumable' / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(long_run.info.run_id, "train/loss")]
    assert sorted(set(steps)) == [1, 2, 3]
    assert "cls/AP" in long_run.data.metrics


def test_a_killed_worker_restarts_from_the_last_checkpoint(synthetic_root, tmp_path, executor):
    # Long enough (about 10 s of training) that the kill lands mid-training, not after the trial is done.
    study = write_study(tmp_path / "restart.yaml", synthetic_root, epochs=10, max_images=24, layout=None,
                        trials=[{"name": "iou", "set": {"model.quality.branch": "iou"}}],
                        resources={"workers": 1, "cpus_per_worker": 1, "max_failures": 2, "executor": executor})
    driver = subprocess.Popen([sys.executable, "-m", "ablab.cli", "run", str(study)], env=ablab_env(tmp_path / "out"),
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"), start_new_session=True)
    try:
        # Kill only once an epoch's report has reached MLflow: by then Train has registered its checkpoint
        # (a checkpoint folder on disk alone can still be mid-registration).
        deadline = time.time() + 600
        while time.time() < deadline and not logged_epochs(tmp_path / "out", "restart"):
            assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.3)
        workers = subprocess.run(["pgrep", "-f", TRIAL_PROCESS[executor]], capture_output=True, text=True).stdout.split()
        assert workers, f"no {TRIAL_PROCESS[executor]} process found"
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        assert driver.wait(600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    trial = next(x for x in _runs(tmp_path / "out", "restart") if x.data.tags["ablab.role"] == "trial")
    assert trial.info.status == "FINISHED" and "alpha_0.5/AP" in trial.data.metrics
    assert int(trial.data.tags["ablab.resumed_at_epoch"]) >= 1  # the new worker started from the checkpoint
