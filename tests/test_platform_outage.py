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
from mlflow.tracking import MlflowClient

from ablab.naming import metric_key
from ablab.tracking import flatten
from platform_helpers import ablab_env, free_port, wait_for_http, wait_until, write_study

pytestmark = pytest.mark.slow
# The suite's outage is short; ABLAB_OUTAGE_S=60 gives the 60-second one (the study then trains longer).
OUTAGE_S = float(os.environ.get("ABLAB_OUTAGE_S", "5"))
# An epoch takes ~1.2 s on an idle 2-core machine (2 trials at once): training must outlast the outage, the
# ~25 s the server takes to start again, and a margin.
EPOCHS = 50 + int(OUTAGE_S * 1.5)


class Server:
    """A real `mlflow server` on 127.0.0.1 whose SQLite store and artifacts outlive its restarts."""

    def __init__(self, tmp):
        self.tmp, self.port, self.proc = tmp, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.tmp / 'server.db'}",
             "--default-artifact-root", str(self.tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(self.tmp / "mlflow.log", "a"))
        wait_for_http(f"{self.uri}/health", 90)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def _trial_runs(uri, study):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"ablab/{study}")
    return client, ([r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("ablab.role") == "trial"]
                    if exp else [])


def _epochs(uri, study) -> int:
    try:
        client, runs = _trial_runs(uri, study)
        return min((len(client.get_metric_history(r.info.run_id, "train/loss")) for r in runs), default=0)
    except Exception:
        return 0


def test_an_mlflow_outage_mid_study_loses_nothing(synthetic_root, tmp_path):
    server = Server(tmp_path)
    server.start()
    study = write_study(tmp_path / "outage.yaml", synthetic_root, epochs=EPOCHS, max_images=40, layout=None)
    out = tmp_path / "out"
    env = ablab_env(out, MLFLOW_TRACKING_URI=server.uri, ABLAB_TRACKING_FLUSH_S="5")
    log = tmp_path / "run.log"
    driver = subprocess.Popen([sys.executable, "-m", "ablab.cli", "run", str(study)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    try:
        wait_until(lambda: _epochs(server.uri, "outage") >= 1 or driver.poll() is not None, 600, "a first epoch")
        # Outage 1: the server is away for a while and comes back; the trials train on meanwhile.
        before = _epochs(server.uri, "outage")
        server.stop()
        time.sleep(OUTAGE_S)
        assert driver.poll() is None, log.read_text()[-3000:]
        server.start()
        wait_until(lambda: "MLflow is back after" in log.read_text() or driver.poll() is not None, 300,
                   "the waiting epochs written once the server is back")
        assert _epochs(server.uri, "outage") > before
        # Outage 2: the server is gone when the study ends.
        server.stop()
        assert driver.wait(600) == 1, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded cluster it started
        if server.proc.poll() is None:  # the test failed with the server up
            server.stop()
    text = log.read_text()
    assert "MLflow cannot take writes" in text and "MLflow is back after" in text
    assert "`ablab sync" in text
    journal = out / "outage" / "smoke" / "mlflow_journal.jsonl"
    assert journal.is_file()

    server.start()
    try:
        r = subprocess.run([sys.executable, "-m", "ablab.cli", "sync", str(study)], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert not journal.exists()
        client, runs = _trial_runs(server.uri, "outage")
        assert sorted(r.data.tags["ablab.trial"] for r in runs) == ["baseline", "iou"]  # one run per trial
        for run in runs:
            folder = out / "outage" / "smoke" / "trials" / run.data.tags["ablab.trial_key"]
            assert run.info.status == "FINISHED"
            history = json.loads((folder / "history.json").read_text())
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
            assert logged == [(h["epoch"], pytest.approx(h["loss"])) for h in history]
            assert len(logged) == EPOCHS
            for name, value in json.loads((folder / "metrics.json").read_text()).items():
                variant, _, metric = name.rpartition("/")
                assert run.data.metrics[metric_key(variant, metric)] == pytest.approx(value), name
            assert run.data.params == flatten(json.loads((folder / "config.json").read_text()))
            assert run.data.tags["ablab.precision"] and run.data.tags["ablab.profile"] == "smoke"
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"config.json", "metrics.json", "model.pt", "detections"} <= artifacts
        (launch,) = [x for x in client.search_runs([runs[0].info.experiment_id]) if x.data.tags["ablab.role"] == "launch"]
        assert launch.info.status == "FINISHED" and launch.data.tags["ablab.failed_trials"] == "0"
    finally:
        server.stop()
