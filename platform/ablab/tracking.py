"""MLflow tracking from the study driver: the single writer of the study's runs.

One experiment per study, a parent run per launch, a child run per trial. Run ids are keyed by the
trial's stable key and persisted in ``<out>/mlflow_runs.json`` (and tagged on the runs), so a resumed
study reopens the same runs instead of creating new ones.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from .naming import (CONFIG_FILE, DETECTIONS_DIR, ERROR_FILE, EXPERIMENT_PREFIX, HISTORY_FILE, LAUNCH_FILE, TRIAL_FILES,
                     metric_key, point_key, point_of)

def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, each value JSON (``ablab.results`` reads it back typed)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v)
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def artifact_location(tracking_uri: str) -> Optional[str]:
    """Artifacts of a local SQLite store live beside it (MLflow would put them under the current directory);
    a tracking server keeps its own artifact root."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


class RunRegistry:
    """{parent_run_id, trials: {key: run_id}} persisted as JSON, written atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"parent": None, "trials": {}}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


class MlflowStudyLogger(Callback):
    """A Ray Tune callback, run in the driver process, that mirrors the study into MLflow."""

    def __init__(self, tracking_uri: str, study, profile: str, configs: dict[str, dict], artifacts_root: Path,
                 registry_path: Path):
        # Tuner.restore unpickles this object as it was when the experiment state was saved: keep only
        # plain state here, and read the run registry from disk whenever a run is looked up.
        self.tracking_uri = tracking_uri
        self.study, self.profile, self.configs = study, profile, configs
        self.artifacts_root, self.registry_path = artifacts_root, registry_path
        self.commit = git_commit()
        self._client: Optional[MlflowClient] = None
        self._logged_epochs: dict[str, set[int]] = {}
        self._reopened: set[str] = set()  # runs set back to RUNNING by this process
        self._precision_tagged: set[str] = set()
        self._resumed_at: dict[str, float] = {}
        self.experiment_id: Optional[str] = None
        self.parent: Optional[str] = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_logged_epochs": {}, "_reopened": set(), "_precision_tagged": set(), "_resumed_at": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def registry(self) -> RunRegistry:
        return RunRegistry(self.registry_path)

    def setup(self, **info) -> None:
        # A restored logger carries the URI of the launch it was pickled in; the launch file holds the current
        # one (resume may have replaced it with --tracking-uri).
        launch = self.registry_path.parent / LAUNCH_FILE
        if launch.is_file():
            self.tracking_uri, self._client = json.loads(launch.read_text())["tracking_uri"], None
        name = EXPERIMENT_PREFIX + self.study.study
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            name, artifact_location=artifact_location(self.tracking_uri),
            tags={"ablab.study": self.study.study, "ablab.paper": self.study.paper, "ablab.table": self.study.table})
        self.parent = self._parent_run()

    def _common_tags(self) -> dict[str, str]:
        return {"ablab.study": self.study.study, "ablab.paper": self.study.paper, "ablab.table": self.study.table,
                "ablab.profile": self.profile, "mlflow.source.git.commit": self.commit}

    def _parent_run(self) -> str:
        registry = self.registry
        run_id = registry.data.get("parent")
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{self.study.study}:{self.profile}",
                                     tags={**self._common_tags(), "ablab.role": "launch"})
        registry.data["parent"] = run.info.run_id
        registry.save()
        return run.info.run_id

    def _rows_of(self, point: dict[str, Any]) -> list[str]:
        """The table rows this training point fills (its trial's, and of those the ones its grid values match)."""
        layout = self.study.table_layout
        return [r.label for r in layout.rows if r.trial == point["trial"]
                and all(point.get(k) == v for k, v in r.where.items())] if layout else []

    def run_for(self, key: str, point: dict[str, Any]) -> str:
        registry = self.registry
        run_id = registry.data["trials"].get(key)
        if run_id:
            if run_id not in self._reopened:  # once per run and process, not on every result
                self._reopen(run_id)
                self._reopened.add(run_id)
            return run_id
        tags = {**self._common_tags(), "mlflow.parentRunId": self.parent, "ablab.role": "trial",
                "ablab.trial_key": key, "ablab.trial": point["trial"], "ablab.seed": str(point["seed"]),
                "ablab.rows": json.dumps(self._rows_of(point)),
                "ablab.columns": json.dumps(self.study.table_layout.columns if self.study.table_layout else []),
                "ablab.variants": json.dumps([v["name"] for v in self.configs[key]["inference"]["variants"]])}
        run = self.client.create_run(self.experiment_id, run_name=key, tags=tags)
        params = [Param(k, v[:6000]) for k, v in flatten(self.configs[key]).items()]
        params += [Param(f"grid.{k}", json.dumps(v)) for k, v in point.items() if k not in ("trial", "seed")]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        registry.data["trials"][key] = run.info.run_id
        registry.save()
        self._reopened.add(run.info.run_id)
        return run.info.run_id

    def _reopen(self, run_id: str) -> None:
        """A trial's run continues (resume) or runs again (--retry-failed): one run per trial either way. An
        earlier failure stays on it as ``ablab.previous_errors`` (a JSON list) and ``ablab.attempts`` counts."""
        tags = self.client.get_run(run_id).data.tags
        if "ablab.interrupted" in tags:
            self.client.delete_tag(run_id, "ablab.interrupted")
        if "ablab.error" in tags:
            previous = json.loads(tags.get("ablab.previous_errors", "[]")) + [tags["ablab.error"][:2000]]
            self.client.set_tag(run_id, "ablab.previous_errors", json.dumps(previous)[:5000])
            self.client.set_tag(run_id, "ablab.attempts", str(len(previous) + 1))
            self.client.delete_tag(run_id, "ablab.error")
        self.client.update_run(run_id, status="RUNNING")

    # ---- Tune callback hooks ----

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(point_key(point_of(trial.config)), point_of(trial.config))

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.run_for(point_key(point_of(trial.config)), point_of(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = point_key(point_of(trial.config))
        run_id = self.run_for(key, point_of(trial.config))
        self._tag_precision(run_id, result)
        if "resumed_at" in result and self._resumed_at.get(run_id) != result["resumed_at"]:
            # a restarted worker or a resumed study continued from this epoch's checkpoint
            self.client.set_tag(run_id, "ablab.resumed_at_epoch", str(int(result["resumed_at"])))
            self._resumed_at[run_id] = result["resumed_at"]
        epoch, done = int(result.get("epoch", 0)), bool(result.get("done"))
        logged = self._epochs_logged(key, run_id)
        # Epochs reported but never logged (the driver was killed in between) are in the trial's history: every
        # checkpoint carries it, and so does the trial folder once the trial is done.
        folder = Path(result["checkpoint_path"]) if result.get("checkpoint_path") else (
            self.artifacts_root / key if done else None)
        if epoch > 0 and folder is not None and (folder / HISTORY_FILE).is_file():
            for past in json.loads((folder / HISTORY_FILE).read_text()):
                if (int(past["epoch"]) < epoch or done) and int(past["epoch"]) not in logged:
                    self._log_epoch(run_id, past, int(result.get("timestamp", 0) * 1000))
                    logged.add(int(past["epoch"]))
        if epoch > 0 and epoch in logged and not done:
            return  # already in MLflow (a restarted worker or restored trial reporting again)
        self._log_epoch(run_id, result, int(result.get("timestamp", 0) * 1000))
        if epoch > 0:
            logged.add(epoch)

    def _tag_precision(self, run_id: str, result: dict[str, Any]) -> None:
        """The precision the trial's workers resolved (``auto`` -> bf16 / fp16 / fp32) and the hardware it was
        resolved on: two results trained differently can be told apart."""
        if run_id in self._precision_tagged or not result.get("precision"):
            return
        self.client.log_batch(run_id, tags=[RunTag("ablab.precision", str(result["precision"])),
                                            RunTag("ablab.hardware", str(result.get("hardware", "")))])
        self._precision_tagged.add(run_id)

    def _epochs_logged(self, key: str, run_id: str) -> set[int]:
        if key not in self._logged_epochs:
            self._logged_epochs[key] = {m.step for m in self.client.get_metric_history(run_id, "train/loss")}
        return self._logged_epochs[key]

    def _log_epoch(self, run_id: str, result: dict[str, Any], ts: int) -> None:
        epoch = int(result.get("epoch", 0))
        metrics = []
        for k, v in result.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k.startswith("loss") or k in ("num_pos", "train_seconds"):
                if not result.get("done"):
                    metrics.append(Metric(f"train/{k}", float(v), ts, epoch))
            elif k == "eval_seconds":
                metrics.append(Metric(k, float(v), ts, epoch))
            elif "/" in k:
                variant, _, metric = k.rpartition("/")
                metrics.append(Metric(metric_key(variant, metric), float(v), ts, epoch))
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True)

    def _finish(self, trial, failed: bool) -> None:
        key = point_key(point_of(trial.config))
        run_id = self.run_for(key, point_of(trial.config))
        trial_dir = self.artifacts_root / key
        error_file = trial_dir / ERROR_FILE
        reason: Optional[str] = None
        if error_file.is_file():
            reason = error_file.read_text().strip()
        elif failed:
            err = trial.get_error() if hasattr(trial, "get_error") else None
            reason = str(err) if err else "trial failed (see Ray Tune logs)"
        (trial_dir / CONFIG_FILE).write_text(json.dumps(self.configs[key], indent=1))
        for name in TRIAL_FILES:
            if (trial_dir / name).is_file():
                self.client.log_artifact(run_id, str(trial_dir / name))
        if (trial_dir / DETECTIONS_DIR).is_dir():
            self.client.log_artifacts(run_id, str(trial_dir / DETECTIONS_DIR), DETECTIONS_DIR)
        if reason:
            self.client.set_tag(run_id, "ablab.error", reason[:5000])
        self.client.set_terminated(run_id, status="FAILED" if reason else "FINISHED")

    def on_experiment_end(self, trials, **info):
        failed = sum(1 for t in trials if t.status == "ERROR")
        # Trials still pending or running here were stopped (SIGTERM, Ctrl-C): their runs end KILLED, which
        # `ablab resume` reopens; the launch run says the study was interrupted.
        # (Tune marks a trial it stops at the end as TERMINATED too: a stopped one never reported `done`.)
        stopped = [t for t in trials if t.status != "ERROR" and not (t.last_result or {}).get("done")]
        registry = self.registry.data["trials"]
        for t in stopped:
            run_id = registry.get(point_key(point_of(t.config)))
            if run_id:
                self.client.set_tag(run_id, "ablab.interrupted", "true")
                self.client.set_terminated(run_id, status="KILLED")
        self.client.set_tag(self.parent, "ablab.trials", str(len(trials)))
        self.client.set_tag(self.parent, "ablab.failed_trials", str(failed))
        self.client.set_tag(self.parent, "ablab.interrupted_trials", str(len(stopped)))
        self.client.set_terminated(self.parent, status="KILLED" if stopped else "FINISHED")
