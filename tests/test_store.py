"""The tracking store's contract (ablab.store for reads, the journal for writes), the same against a SQLite file and
against a real `mlflow server` on 127.0.0.1: what a study writes through its journal, every reader gets back."""
import json
import time

import numpy as np
import pytest

from ablab import store
from ablab.journal import LAUNCH, Journal, MlflowWriter, RunRegistry, finished_trials, write_now

from platform_helpers import MlflowServer

STUDY = "contract"


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def uri(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
        return
    with MlflowServer(tmp_path) as server:
        yield server.uri


def _launch(uri, folder):
    """A launch as the study logger makes it: the experiment and the launch run, their ids in the registry."""
    client = store.mlflow_client(uri)
    experiment = client.create_experiment(f"ablab/{STUDY}", artifact_location=str(folder / "artifacts"))
    parent = client.create_run(experiment, run_name=f"{STUDY}:smoke",
                               tags={"ablab.role": "launch", "ablab.profile": "smoke"}).info.run_id
    registry = RunRegistry(folder / "mlflow_runs.json")
    registry.data.update(parent=parent, experiment=experiment)
    registry.save()
    return experiment, parent, registry.path


def test_what_a_study_writes_through_its_journal_every_reader_gets_back(uri, tmp_path):
    store.open_store(uri)
    experiment, parent, registry = _launch(uri, tmp_path)
    journal = Journal(tmp_path, MlflowWriter(uri, registry).apply)
    (tmp_path / "bootstrap.json").write_text(json.dumps({"cls": {"AP": [0.30, 0.32, 0.31]}}))
    (tmp_path / "scatter.json").write_text(json.dumps({"cls": {"confidence": [0.9], "iou_eval": [0.8]}}))
    now = int(time.time() * 1000)
    for trial, ap in (("base_seed0", 0.31), ("iou_seed0", 0.35)):
        tags = {"ablab.role": "trial", "ablab.profile": "smoke", "ablab.trial": trial.split("_")[0],
                "ablab.trial_key": trial, "ablab.seed": "0", "ablab.variants": json.dumps(["cls"]),
                "mlflow.parentRunId": parent}
        journal.write("create", run=trial, experiment=experiment, name=trial, tags=tags,
                      params=[["train.lr", "0.01"], ["model.quality.branch", json.dumps("iou")]])
        journal.write("log_batch", run=trial, metrics=[["train/loss", 2.0, now, 1], ["train/loss", 1.0, now, 2],
                                                        ["cls/AP", ap, now, 0]])
        journal.write("artifact", run=trial, path=str(tmp_path / "bootstrap.json"))
        journal.write("artifact", run=trial, path=str(tmp_path / "scatter.json"))
        journal.write("end", run=trial, status="FINISHED" if trial.startswith("base") else "FAILED")
    assert journal.drain(60) == 0

    assert store.experiment_id(uri, STUDY) == experiment and store.experiment_id(uri, "none") is None
    frame = store.trial_runs(uri, STUDY, "smoke").sort_values("trial_key").reset_index(drop=True)
    assert list(frame["trial_key"]) == ["base_seed0", "iou_seed0"] and list(frame["variant"]) == ["cls", "cls"]
    assert list(frame["status"]) == ["FINISHED", "FAILED"] and frame["AP"].tolist() == pytest.approx([0.31, 0.35])
    assert frame["train.lr"].tolist() == [0.01, 0.01] and set(frame["model.quality.branch"]) == {"iou"}  # typed
    assert store.trial_runs(uri, STUDY, "paper").empty  # another launch's
    assert len(store.trial_runs(uri, STUDY, "smoke", include_failed=False)) == 1
    runs = dict(zip(frame["trial_key"], frame["run_id"]))
    reps = store.replicates(frame, uri)  # finished runs only
    assert list(reps) == [runs["base_seed0"]]
    np.testing.assert_allclose(reps[runs["base_seed0"]]["cls"]["AP"], [0.30, 0.32, 0.31])
    assert store.histories(uri, [runs["base_seed0"]], ("train/",))[runs["base_seed0"]] == {
        "train/loss": [(1, 2.0), (2, 1.0)]}
    assert store.scatter_samples(uri, runs)["iou_seed0"]["cls"]["iou_eval"] == [0.8]
    assert finished_trials(uri, registry) == {"base_seed0"}

    # The launch run: found by its key, written through the journal after the study, read back by the report.
    assert store.launch_run(uri, experiment, "smoke") == parent and store.launch_run(uri, experiment, "x") is None
    assert write_now(uri, registry, "log_batch", run=LAUNCH, metrics=[["wall_s", 12.5, now, 0]],
                     tags=[["ablab.estimate", "estimate 10s, took 12s"]])
    assert store.run_tags(uri, parent)["ablab.estimate"] == "estimate 10s, took 12s"
    plot = tmp_path / "effects.png"
    plot.write_bytes(b"\x89PNG")
    store.log_artifacts(uri, parent, [plot], "plots")
    assert [a.path for a in store.mlflow_client(uri).list_artifacts(parent, "plots")] == ["plots/effects.png"]


def test_a_write_after_the_study_that_the_store_cannot_take_waits_in_the_journal(tmp_path, monkeypatch):
    from ablab.journal import pending_entries

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    registry = RunRegistry(tmp_path / "mlflow_runs.json")
    registry.data["parent"] = "0123"
    registry.save()
    entry = {"op": "log_batch", "run": LAUNCH, "tags": [["ablab.claims", "1 reproduced"]]}
    assert not write_now("http://127.0.0.1:9", registry.path, **entry)  # nothing listens there
    assert pending_entries(tmp_path) == [entry]  # for `ablab sync`


def test_an_unusable_store_is_an_error_naming_it():
    from detector.config import ConfigError

    with pytest.raises(ConfigError, match="tracking URI nosuch://store: cannot open the MLflow store"):
        store.open_store("nosuch://store")
