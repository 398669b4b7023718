"""The one port to the tracking store: every MlflowClient ablab uses is made here.

Reads: a launch's trial runs as a frame (``trial_runs``), their bootstrap replicates, per-epoch histories, scatter
samples, the launch run, the experiment, and which trials finished. Writes of a study's runs go through its
journal (ablab.journal, which applies them with ``mlflow_client``); the one write made here is a report's plots, which
anyone with the tracking URI may build, far from the launch's folder and its journal. No Ray; MLflow is imported
by the functions that use it, so that reading the module costs nothing.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from detector.config import ConfigError

from .naming import BOOTSTRAP_FILE, EXPERIMENT_PREFIX, SCATTER_FILE, metric_key
from .preflight import probe_tracking_server


def mlflow_client(uri: str):
    """An MlflowClient for ``uri``: the journal's writer and the study's logger write through theirs."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def open_store(tracking_uri: str) -> None:
    """Open the tracking store once (creating a new SQLite file's schema; MLflow caches it per URI). Imports
    MLflow only, never Ray: it runs in a thread while Ray starts."""
    try:
        mlflow_client(tracking_uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises many kinds (bad scheme, refused connection, locked file)
        raise ConfigError(f"tracking URI {tracking_uri}: cannot open the MLflow store ({type(err).__name__}: "
                          f"{str(err)[:300]})") from err


def experiment_id(uri: str, study_id: str) -> Optional[str]:
    """The study's experiment (``ablab/<study>``), None if it has none in the store."""
    exp = mlflow_client(uri).get_experiment_by_name(EXPERIMENT_PREFIX + study_id)
    return exp.experiment_id if exp else None


def _cast(value: str) -> Any:
    """A param as logged (JSON); runs logged before params were JSON held str() of the value."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return {"True": True, "False": False, "None": None}.get(value, value)


def trial_runs(uri: str, study_id: str, key: Optional[str], include_failed: bool = True) -> pd.DataFrame:
    """``results``' frame: the trial runs of the launch named ``key`` (naming.launch_key; None: every launch) of
    ``study_id`` in the store at ``uri``."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no MLflow store for study {study_id} at {uri}; run the study or pass tracking_uri")
    probe_tracking_server(uri)  # a server that is down fails now, not after MLflow's minutes of retries
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT_PREFIX + study_id)
    if exp is None:
        raise ConfigError(f"study {study_id!r} has no MLflow experiment in {uri}")
    query = "tags.`ablab.role` = 'trial'" + (f" and tags.`ablab.profile` = '{key}'" if key else "")
    runs = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        identity = {"study": study_id, "profile": tags.get("ablab.profile"), "trial": tags.get("ablab.trial"),
                    "seed": int(tags.get("ablab.seed", 0)), "trial_key": tags.get("ablab.trial_key"),
                    "run_id": run.info.run_id, "status": run.info.status, "error": tags.get("ablab.error"),
                    "precision": tags.get("ablab.precision"), "hardware": tags.get("ablab.hardware")}
        if not include_failed and run.info.status != "FINISHED":
            continue
        config = {k: _cast(v) for k, v in params.items()}
        variants = json.loads(tags.get("ablab.variants", "[]")) or sorted(
            {k.rpartition("/")[0] for k in metrics if not k.startswith("train/")})
        for variant in variants:
            prefix = metric_key(variant, "")
            values = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
            rows.append({**identity, "variant": variant, **config, **values})
        if not variants:
            rows.append({**identity, "variant": None, **config})
    return pd.DataFrame(rows)


def replicates(frame: pd.DataFrame, tracking_uri: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Each finished run's bootstrap replicates (its bootstrap.json artifact): run id -> variant -> metric ->
    (R,). A run without them (logged before ablab kept them) is left out: its cells get no image interval."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    out = {}
    runs = frame.loc[frame["status"] == "FINISHED", "run_id"].unique() if "status" in frame else []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in runs:
            try:
                path = client.download_artifacts(run_id, BOOTSTRAP_FILE, str(Path(tmp) / run_id))
                data = json.loads(Path(path).read_text())
            except (MlflowException, OSError, ValueError):  # none (logged before ablab kept them), or cut short
                continue
            out[run_id] = {v: {m: np.asarray(r, np.float64) for m, r in by_metric.items()} for v, by_metric in data.items()}
    return out


def launch_run(uri: str, experiment: str, key: str) -> Optional[str]:
    """The latest launch run of the launch named ``key`` (its ``ablab.profile`` tag)."""
    runs = mlflow_client(uri).search_runs([experiment], f"tags.`ablab.role` = 'launch' and tags.`ablab.profile` = '{key}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def run_tags(uri: str, run_id: str) -> dict[str, str]:
    return mlflow_client(uri).get_run(run_id).data.tags


def histories(uri: str, run_ids, prefixes: tuple[str, ...]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run id -> each metric whose key starts with one of ``prefixes``: its (step, value) history."""
    client, out = mlflow_client(uri), {}
    for run_id in run_ids:
        keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefixes)]
        out[run_id] = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}
    return out


def scatter_samples(uri: str, runs: dict[str, str]) -> dict[str, dict]:
    """trial key -> {variant: {confidence, iou_eval}}, from each run's scatter.json artifact."""
    from mlflow.exceptions import MlflowException

    client, out = mlflow_client(uri), {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, run_id in runs.items():
            try:
                path = client.download_artifacts(run_id, SCATTER_FILE, tmp)
            except (MlflowException, OSError):
                continue  # a failed trial has none
            out[key] = json.loads(Path(path).read_text())
    return out


def log_artifacts(uri: str, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """A report's files on the launch run (the report is rebuilt from the store: it has no journal of its own)."""
    client = mlflow_client(uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def finished_trials(tracking_uri: str, trial_runs: dict[str, str]) -> frozenset[str]:
    """The trial keys (of ``trial_runs``: key -> run id) whose MLflow run has FINISHED: a resume never runs them
    again, even where Ray Tune's saved state (written every few seconds) had not yet recorded their end. Empty if
    the store cannot say."""
    client, done = mlflow_client(tracking_uri), set()
    for key, run_id in trial_runs.items():
        try:
            if client.get_run(run_id).info.status == "FINISHED":
                done.add(key)
        except Exception:  # noqa: BLE001 - a store that is down, a run deleted: the trial runs, as without this
            continue
    return frozenset(done)
