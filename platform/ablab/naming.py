"""The names ablab gives things, in one place: MLflow experiment names and metric keys, a launch's and a trial's
key, and the files a trial (or ``ablab train`` / ``evaluate``) writes. No Ray, no MLflow, no torch: ``ablab.results``
and the reports import it."""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

from detector.config import set_text

EXPERIMENT_PREFIX = "ablab/"
"""A study's MLflow experiment is ``ablab/<study>``."""

LAUNCH_FILE = "launch.json"
"""In a launch's folder: the study file, the profile, its ``--set`` overrides (``set``: {key: value}), the seeds
and the tracking URI (without credentials) it logs to; resume reads it, ``--tracking-uri`` on resume rewrites it."""
REGISTRY_FILE = "mlflow_runs.json"
"""In a launch's folder: its MLflow experiment, launch run and each trial's run id (journal.RunRegistry)."""
SET_TAG = "ablab.set"
"""On a launch's runs (the launch run and every trial's): its ``--set`` overrides as JSON {key: value}."""


def launch_key(profile: str, sets: dict[str, Any]) -> str:
    """What names a launch of a study profile: its folder (``<output root>/<study>/<key>``) and its runs'
    ``ablab.profile`` tag. The profile's name, and where ``--set`` overrides change its trial configs, a digest of
    them as a set: ``paper+set-1a2b3c4d`` (``+`` is in no profile name). A folder or run trained under other
    overrides is never resumed, skipped or tabulated as this launch's, and launches of one profile with and
    without an override keep their results side by side. (The trial keys, which the rows read, stay the same.)"""
    if not sets:
        return profile
    canonical = json.dumps(sorted(sets.items()), separators=(",", ":"), sort_keys=True)
    return f"{profile}+set-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def launch_args(profile: str, sets: dict[str, Any]) -> str:
    """The arguments that name a launch on the command line, quoted for a shell:
    ``--profile paper --set 'train.steps=[9]'``."""
    return " ".join(shlex.quote(a) for a in ["--profile", profile, *[w for k, v in sets.items()
                                                                       for w in ("--set", set_text(k, v))]])
HISTORY_FILE = "history.json"
"""Per-epoch training metrics, in a trial's folder and in each Train checkpoint."""
CONFIG_FILE, METRICS_FILE, SCATTER_FILE, MODEL_FILE, ERROR_FILE, BOOTSTRAP_FILE = (
    "config.json", "metrics.json", "scatter.json", "model.pt", "error.txt", "bootstrap.json")
DETECTIONS_DIR = "detections"
"""One COCO results file per variant: what the COCO test-dev server takes for submission."""
TRIAL_FILES = (CONFIG_FILE, METRICS_FILE, SCATTER_FILE, BOOTSTRAP_FILE, MODEL_FILE, ERROR_FILE)
"""A trial folder's files that go to its MLflow run as artifacts (with DETECTIONS_DIR)."""

_NOT_IN_MLFLOW_NAMES = re.compile(r"[^/\w.\- :]")


def variant_slug(variant: str) -> str:
    """A variant's name where MLflow and file names need it plain: ``alpha=0.4,truth`` -> ``alpha_0.4-truth``,
    ``cls,q>0.5`` -> ``cls-qgt0.5``; any other character outside [\\w.\\- :] becomes ``_``."""
    return _NOT_IN_MLFLOW_NAMES.sub("_", variant.replace("=", "_").replace(",", "-").replace(">", "gt").replace("/", "_"))


def metric_key(variant: str, metric: str) -> str:
    """The MLflow metric of one variant: ``alpha_0.4-truth/AP``."""
    return f"{variant_slug(variant)}/{metric}"


def write_eval_outputs(out: Path, result) -> None:
    """An evaluation's files (``result``: a detector.evaluator.EvalResult): METRICS_FILE,
    DETECTIONS_DIR/<variant slug>.json (COCO results), SCATTER_FILE (the confidence / IoU_eval samples of
    Figure 4) and BOOTSTRAP_FILE (each metric's replicates over val images, for paired intervals)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(result.metrics, indent=1, sort_keys=True))
    (out / DETECTIONS_DIR).mkdir(exist_ok=True)
    for name, dets in result.detections.items():
        (out / DETECTIONS_DIR / f"{variant_slug(name)}.json").write_text(json.dumps(dets.coco_results()))
    (out / SCATTER_FILE).write_text(json.dumps(
        {name: {"confidence": list(map(float, c)), "iou_eval": list(map(float, i))}
         for name, (c, i) in result.scatter.items()}))
    (out / BOOTSTRAP_FILE).write_text(json.dumps(
        {name: {metric: [round(float(x), 6) for x in reps] for metric, reps in by_metric.items()}
         for name, by_metric in result.bootstrap.items()}))


POINT = "point"
"""The one Tune parameter of a study: its grid is the list of training points (a trial's own sweep makes it
no cross product), each a dict {"trial": name, "seed": s, <grid key>: value, ...}."""


def point_of(tune_config: dict[str, Any]) -> dict[str, Any]:
    """The training point of a Tune trial's config (a study launched before points were one parameter has
    the point's keys at the top level)."""
    return tune_config.get(POINT, tune_config)


def point_key(point: dict[str, Any]) -> str:
    """A stable, readable id of a training point: trial name, seed and grid values."""
    parts = [str(point["trial"]), f"seed{point['seed']}"]
    parts += [f"{k.rsplit('.', 1)[-1]}={','.join(map(str, v)) if isinstance(v, list) else v}"
              for k, v in sorted(point.items()) if k not in ("trial", "seed")]
    return "_".join(parts).replace("/", "-").replace(" ", "")
