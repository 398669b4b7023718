"""An MLflow server that goes away mid-study: training goes on, the driver keeps what it could not write in
its journal and writes it when the server is back; a server still down at the end leaves the study finished,
saying so, and `ablab sync` writes the rest later. Nothing is lost: every metric, param, tag and artifact in
MLflow is checked against the trials' own files."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ablab.naming import metric_key
from ablab.tracking import flatten
from platform_helpers import MlflowServer, ablab_env, study_runs, wait_until, write_study

pytestmark = pytest.mark.slow
# The suite's outage is short; ABLAB_OUTAGE_S=60 gives the 60-second one (and a study that trains through it).
OUTAGE_S = float(os.environ.get("ABLAB_OUTAGE_S", "5"))
EPOCHS = 8 + int(OUTAGE_S) // 2


def _trial_runs(uri, study):
    return study_runs(uri, study, "trial")


def _epochs(uri, study) -> int:
    try:
        client, runs = _trial_runs(uri, study)
        return min((len(client.get_metric_history(r.info.run_id, "train/loss")) for r in runs), default=0)
    except Exception:
        return 0


def _check_everything_is_in_mlflow(uri, out, study, epochs):
    """Every metric, param, tag and artifact of the study's trials in MLflow, against the trials' own files."""
    client, runs = _trial_runs(uri, study)
    assert sorted(r.data.tags["ablab.trial"] for r in runs) == ["baseline", "iou"]  # one run per trial
    for run in runs:
        folder = out / study / "smoke" / "trials" / run.data.tags["ablab.trial_key"]
        assert run.info.status == "FINISHED"
        history = json.loads((folder / "history.json").read_text())
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert logged == [(h["epoch"], pytest.approx(h["loss"])) for h in history]
        assert len(logged) == epochs
        for name, value in json.loads((folder / "metrics.json").read_text()).items():
            variant, _, metric = name.rpartition("/")
            assert run.data.metrics[metric_key(variant, metric)] == pytest.approx(value), name
        assert run.data.params == flatten(json.loads((folder / "config.json").read_text()))
        assert run.data.tags["ablab.precision"] and run.data.tags["ablab.profile"] == "smoke"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "metrics.json", "model.pt", "detections"} <= artifacts
    (launch,) = [x for x in client.search_runs([runs[0].info.experiment_id]) if x.data.tags["ablab.role"] == "launch"]
    assert launch.info.status == "FINISHED" and launch.data.tags["ablab.failed_trials"] == "0"
    assert not (out / study / "smoke" / "mlflow_journal.jsonl").exists()  # all written out


def _run(study, env, log):
    return subprocess.Popen([sys.executable, "-m", "ablab.cli", "run", str(study)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)


def test_an_mlflow_outage_mid_study_loses_nothing(synthetic_root, tmp_path):
    """The server is stopped after the first epoch and started again OUTAGE_S later (it takes 25-90 s to start
    on 2 busy cores): the trials train on, and the writes that waited are written once it answers (the end of
    the study waits up to 300 s for it here)."""
    server = MlflowServer(tmp_path)
    server.start()
    study = write_study(tmp_path / "outage.yaml", synthetic_root, epochs=EPOCHS, max_images=40, layout=None)
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    driver = _run(study, ablab_env(out, MLFLOW_TRACKING_URI=server.uri, ABLAB_TRACKING_FLUSH_S="300"), log)
    try:
        wait_until(lambda: _epochs(server.uri, "outage") >= 1 or driver.poll() is not None, 600, "a first epoch")
        server.stop()
        time.sleep(OUTAGE_S)
        assert driver.poll() is None, log.read_text()[-3000:]  # training goes on
        server.start()
        assert driver.wait(600) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "MLflow cannot take writes" in text and "MLflow is back after" in text
        _check_everything_is_in_mlflow(server.uri, out, "outage", EPOCHS)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded cluster it started
        if server.proc.poll() is None:
            server.stop()


def test_a_server_still_down_at_the_end_leaves_everything_on_disk_for_ablab_sync(synthetic_root, tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    study = write_study(tmp_path / "outage_end.yaml", synthetic_root, epochs=3, max_images=24, layout=None)
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    env = ablab_env(out, MLFLOW_TRACKING_URI=server.uri, ABLAB_TRACKING_FLUSH_S="5")
    driver = _run(study, env, log)
    try:
        wait_until(lambda: _epochs(server.uri, "outage_end") >= 1 or driver.poll() is not None, 600, "a first epoch")
        server.stop()
        assert driver.wait(600) == 1, log.read_text()[-3000:]  # finished, saying what waits
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert "`ablab sync" in log.read_text()
    assert (out / "outage_end" / "smoke" / "mlflow_journal.jsonl").is_file()
    server.start()
    try:
        r = subprocess.run([sys.executable, "-m", "ablab.cli", "sync", str(study)], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        _check_everything_is_in_mlflow(server.uri, out, "outage_end", 3)
    finally:
        server.stop()
