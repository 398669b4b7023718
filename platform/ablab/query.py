"""Query a study's results from MLflow alone: anyone with the tracking URI can tabulate them."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from detector.config import ConfigError, parse_sets

from .launch import Launch, open_launch
from .paths import check_name, resolve_tracking_uri, results_root
from .preflight import probe_tracking_server
from .naming import BOOTSTRAP_FILE, EXPERIMENT_PREFIX, launch_key, metric_key


def study_id_of(study: str) -> str:
    """A study id, or the path of a study file (its ``study:`` field)."""
    if study.endswith((".yaml", ".yml")) and Path(study).is_file():
        from .study import load_study

        return load_study(study).study
    return study


def _cast(value: str) -> Any:
    """A param as logged (JSON); runs logged before params were JSON held str() of the value."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return {"True": True, "False": False, "None": None}.get(value, value)


def results(study: str, profile: Optional[str] = None, tracking_uri: Optional[str] = None,
            out_root: Optional[str] = None, include_failed: bool = True, overrides: Sequence[str] = (),
            **filters: Any) -> pd.DataFrame:
    """One row per trial x inference variant of a launch: ``profile`` with ``overrides`` (the ``--set`` items it
    was run with; every launch of every profile if ``profile`` is None). Identity columns (study, profile: the
    launch's key, ``paper+set-1a2b3c4d`` where it had overrides, trial, seed, trial_key,
    run_id, status, error, precision and hardware as resolved where the trial trained, variant), config columns (the flattened trial config, typed), and metric
    columns (AP, AP50, ..., AP90, pearson, ...). ``filters``: column=value equality (dots as in the config,
    e.g. ``**{"model.quality.branch": "iou"}`` or ``trial="iou"``)."""
    study_id = study_id_of(study)
    out_root = results_root(study_id, out_root)
    sets = parse_sets(overrides)
    if profile is not None:
        profile = launch_key(check_name("--profile", profile), sets)  # it goes into MLflow's filter string
    elif sets:
        raise ConfigError("--set names a launch of a profile: give --profile too")
    df = trial_runs(resolve_tracking_uri(study_id, tracking_uri, out_root), study_id, profile, include_failed)
    for col, value in filters.items():
        if col not in df.columns:
            raise KeyError(f"filter {col!r}: no such column (have e.g. {list(df.columns)[:12]})")
        df = df[df[col] == value]
    return df.reset_index(drop=True)


def trial_runs(uri: str, study_id: str, key: Optional[str], include_failed: bool = True) -> pd.DataFrame:
    """``results``' frame: the trial runs of the launch named ``key`` (naming.launch_key; None: every launch) of
    ``study_id`` in the store at ``uri``."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no MLflow store for study {study_id} at {uri}; run the study or pass tracking_uri")
    probe_tracking_server(uri)  # a server that is down fails now, not after MLflow's minutes of retries
    client = MlflowClient(uri)
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


@dataclass
class LaunchResults:
    """What every reader of a launch needs from its store: its trial runs, their bootstrap replicates, and
    where they were read (its output root and tracking URI)."""

    frame: pd.DataFrame
    replicates: dict[str, dict[str, dict[str, np.ndarray]]]
    out_root: Optional[str]
    tracking_uri: str


def launch_results(launch: Launch, tracking_uri: Optional[str] = None, out_root: Optional[str] = None) -> LaunchResults:
    """The launch's runs and replicates, read where its results are (results_root: a Ray job's from the
    checkout too) from its store (--tracking-uri > $MLFLOW_TRACKING_URI > the study's SQLite file)."""
    out_root = results_root(launch.study.study, out_root)
    uri = resolve_tracking_uri(launch.study.study, tracking_uri, out_root)
    frame = trial_runs(uri, launch.study.study, launch.key).reset_index(drop=True)
    return LaunchResults(frame, replicates(frame, uri) if not frame.empty else {}, out_root, uri)


def replicates(frame: pd.DataFrame, tracking_uri: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Each finished run's bootstrap replicates (its bootstrap.json artifact): run id -> variant -> metric ->
    (R,). A run without them (logged before ablab kept them) is left out: its cells get no image interval."""
    client = MlflowClient(tracking_uri)
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


def claims(study: str, profile: str = "smoke", tracking_uri: Optional[str] = None,
           out_root: Optional[str] = None, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Every claim of a study file against its runs in MLflow (of the launch ``profile`` with ``overrides``): the
    claim's kind, the paper's difference, ours with its 95% interval, the verdict and why, how it stands against
    the paper's difference, and for a claim between models the power of its seeds (ablab.evidence.claims_frame)."""
    return launch_claims(open_launch(study, profile, overrides), tracking_uri, out_root)


def launch_claims(launch: Launch, tracking_uri: Optional[str] = None, out_root: Optional[str] = None) -> pd.DataFrame:
    from .evidence import claims_frame
    from .table import as_trained

    read = launch_results(launch, tracking_uri, out_root)
    return claims_frame(as_trained(launch), read.frame, read.replicates)


def effects(study: str, profile: str = "smoke", tracking_uri: Optional[str] = None,
            out_root: Optional[str] = None, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Each change of a study file against its baseline, per column (ablab.evidence.effects_frame), with the
    row labels naming what the profile trained (in the launch with ``overrides``)."""
    from .evidence import effects_frame
    from .table import as_trained

    launch = open_launch(study, profile, overrides)
    read = launch_results(launch, tracking_uri, out_root)
    return effects_frame(as_trained(launch), read.frame, read.replicates)
