"""Query a study's results from MLflow alone: anyone with the tracking URI can tabulate them (the public
``ablab.results`` / ``claims`` / ``effects``, and what the commands read of a launch); and, while MLflow still
lacks a launch's writes, the same results from its trials' own files (``trial_files``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from detector.config import ConfigError, parse_sets

from .launch import Launch, open_launch
from .naming import BOOTSTRAP_FILE, CONFIG_FILE, METRICS_FILE, launch_key, point_key
from .paths import check_name, resolve_tracking_uri, results_root
from .rows import ResultSet
from .store import replicates, trial_runs


def study_id_of(study: str) -> str:
    """A study id, or the path of a study file (its ``study:`` field)."""
    if study.endswith((".yaml", ".yml")) and Path(study).is_file():
        from .study import load_study

        return load_study(study).study
    return study


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


@dataclass
class LaunchResults:
    """What every reader of a launch needs from its store: its results (trial runs and their bootstrap
    replicates) and where they were read (its output root and tracking URI)."""

    results: ResultSet
    out_root: Optional[str]
    tracking_uri: str


def launch_results(launch: Launch, tracking_uri: Optional[str] = None, out_root: Optional[str] = None) -> LaunchResults:
    """The launch's runs and replicates, read where its results are (results_root: a Ray job's from the
    checkout too) from its store (--tracking-uri > $MLFLOW_TRACKING_URI > the study's SQLite file)."""
    out_root = results_root(launch.study.study, out_root)
    uri = resolve_tracking_uri(launch.study.study, tracking_uri, out_root)
    frame = trial_runs(uri, launch.study.study, launch.key).reset_index(drop=True)
    return LaunchResults(ResultSet(frame, replicates(frame, uri) if not frame.empty else {}), out_root, uri)


def trial_files(launch: Launch, out_dir: Path) -> ResultSet:
    """A launch's results read from its trials' own files (``<out_dir>/trials/<key>/``: config.json, metrics.json,
    bootstrap.json) as ``launch_results`` reads them from MLflow, the trial keys standing for run ids: what a launch's claims are checked on while MLflow has not taken all its writes. A trial without its
    metrics has not finished and is left out."""
    rows, reps = [], {}
    for point in launch.trial_points():
        key = point_key(point)
        folder = out_dir / "trials" / key
        try:
            metrics = json.loads((folder / METRICS_FILE).read_text())
            config = json.loads((folder / CONFIG_FILE).read_text())
            bootstrap = json.loads((folder / BOOTSTRAP_FILE).read_text())
        except (OSError, ValueError):
            continue
        variants = [v["name"] for v in config.get("inference", {}).get("variants", [])] or sorted(
            {k.rpartition("/")[0] for k in metrics})
        flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
        identity = {"study": launch.study.study, "profile": launch.key, "trial": point["trial"], "seed": point["seed"],
                    "trial_key": key, "run_id": key, "status": "FINISHED"}
        for variant in variants:
            values = {k[len(variant) + 1:]: v for k, v in metrics.items() if k.startswith(f"{variant}/")}
            rows.append({**identity, "variant": variant, **flat, **values})
        reps[key] = {v: {m: np.asarray(r, np.float64) for m, r in by_metric.items()} for v, by_metric in bootstrap.items()}
    return ResultSet(pd.DataFrame(rows), reps)


def claims(study: str, profile: str = "smoke", tracking_uri: Optional[str] = None,
           out_root: Optional[str] = None, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Every claim of a study file against its runs in MLflow (of the launch ``profile`` with ``overrides``): the
    claim's kind, the paper's difference, ours with its 95% interval, the verdict and why, how it stands against
    the paper's difference, and for a claim between models the power of its seeds (ablab.evidence.claims_frame)."""
    return launch_claims(open_launch(study, profile, overrides), tracking_uri, out_root)


def launch_claims(launch: Launch, tracking_uri: Optional[str] = None, out_root: Optional[str] = None) -> pd.DataFrame:
    from .evidence import claims_frame
    from .labels import as_trained

    return claims_frame(as_trained(launch), launch_results(launch, tracking_uri, out_root).results)


def effects(study: str, profile: str = "smoke", tracking_uri: Optional[str] = None,
            out_root: Optional[str] = None, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Each change of a study file against its baseline, per column (ablab.evidence.effects_frame), with the
    row labels naming what the profile trained (in the launch with ``overrides``)."""
    from .evidence import effects_frame
    from .labels import as_trained

    launch = open_launch(study, profile, overrides)
    return effects_frame(as_trained(launch), launch_results(launch, tracking_uri, out_root).results)
