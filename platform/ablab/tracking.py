"""MLflow tracking from the study driver: the single writer of the study's runs.

One experiment per study, a parent run per launch, a child run per trial. Run ids are keyed by the
trial's stable key and persisted in ``<out>/mlflow_runs.json`` (and tagged on the runs), so a resumed
study reopens the same runs instead of creating new ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from ray.tune import Callback

from .launch import Launch
from .journal import (FLUSH_WAIT_S, LAUNCH, Journal, MlflowWriter, RunRegistry, finished_trials, unavailable,
                      write_now)
from .logs import log
from .paths import browse_lines
from .store import mlflow_client
from .naming import (CONFIG_FILE, DETECTIONS_DIR, ERROR_FILE, EXPERIMENT_PREFIX, HISTORY_FILE, LAUNCH_FILE, SET_TAG,
                     TRIAL_FILES, metric_key, point_key, point_of)

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


class MlflowStudyLogger(Callback):
    """A Ray Tune callback, run in the driver process, that mirrors the study into MLflow.

    The experiment and the launch run are made when the study starts (the store was checked just before);
    every later write goes through the study's :class:`~ablab.journal.Journal`, so no trial and no Tune
    callback waits on an MLflow write, and an outage costs nothing but delay (the one read left is a trial's
    logged epochs, once per trial and process). ``key`` is the launch's (naming.launch_key): the runs'
    ``ablab.profile`` tag."""

    def __init__(self, tracking_uri: str, study, key: str, configs: dict[str, dict], artifacts_root: Path,
                 registry_path: Path):
        # Tuner.restore unpickles this object as it was when the experiment state was saved: keep only
        # plain state here (its names too: `profile` holds the key), and read the run registry from disk whenever
        # a run is looked up.
        self.tracking_uri = tracking_uri
        self.study, self.profile, self.configs = study, key, configs
        self.artifacts_root, self.registry_path = artifacts_root, registry_path
        self.commit = git_commit()
        self._reset()
        self.experiment_id: Optional[str] = None
        self.parent: Optional[str] = None

    def _reset(self) -> None:
        """This process's handles and caches: the underscored attributes, never pickled."""
        self._client = None  # an MlflowClient (ablab.store)
        self._journal: Optional[Journal] = None
        self._logged_epochs: dict[str, set[int]] = {}
        self._started: set[str] = set()  # trial keys whose run this process made or reopened (or queued so)
        self._tagged: dict[tuple[str, str], str] = {}  # (key, tag) -> value written by this process
        self._errors: dict[str, str] = {}  # trial key -> the failure its driver reported
        self._finished_before: frozenset[str] = frozenset()  # trials FINISHED in MLflow before this launch
        self._sets: dict[str, Any] = {}  # the launch's --set overrides (launch.json), tagged on its runs

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    @property
    def journal(self) -> Journal:
        assert self._journal is not None, "setup() starts the journal"
        return self._journal

    @property
    def registry(self) -> RunRegistry:
        return RunRegistry(self.registry_path)

    def setup(self, **info) -> None:
        # A restored logger carries the URI of the launch it was pickled in; the launch file holds the current
        # one (resume may have replaced it with --tracking-uri).
        launch = self.registry_path.parent / LAUNCH_FILE
        if launch.is_file():
            record = json.loads(launch.read_text())
            self.tracking_uri, self._client, self._sets = record["tracking_uri"], None, record.get("set", {})
        # A request to a server that is down fails in seconds instead of MLflow's two minutes of retries: the
        # journal tries again itself.
        for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
                           ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")):
            os.environ.setdefault(var, value)
        name = EXPERIMENT_PREFIX + self.study.study
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            name, artifact_location=artifact_location(self.tracking_uri),
            tags={"ablab.study": self.study.study, "ablab.paper": self.study.paper, "ablab.table": self.study.table})
        for key, value in self._experiment_tags().items():
            self.client.set_experiment_tag(self.experiment_id, key, value)
        self.parent, existed = self._parent_run()
        for line in browse_lines(self.tracking_uri, self.experiment_id):
            log.info(line)
        self._journal = Journal(self.registry_path.parent, MlflowWriter(self.tracking_uri, self.registry_path).apply)
        # Their runs stay as they ended: a restored Tune state may hold them unfinished (trial.py reports them
        # again without training), and reopening would move their end.
        self._finished_before = finished_trials(self.tracking_uri, self.registry_path) if existed else frozenset()
        if existed:  # after what an earlier launch left in the journal (its end of the launch run, say)
            self.journal.write("reopen", run=LAUNCH)

    def _experiment_tags(self) -> dict[str, str]:
        """The experiment's description in the UI (the profile of the latest launch) and its kind: MLflow shows a
        custom-model-development experiment's runs where the UI follows the tag (3.17's workflow switch does not:
        the URL ablab prints asks for the runs)."""
        what = self.study.title or f"{self.study.paper} table {self.study.table}"
        note = (f"ablab study {self.study.study}: paper {self.study.paper}, table {self.study.table} ({what}); "
                f"latest launch: profile {self.profile}, run {self.study.study}:{self.profile} with a child run per trial")
        return {"mlflow.note.content": note, "mlflow.experimentKind": "custom_model_development"}

    def _common_tags(self) -> dict[str, str]:
        """``ablab.profile`` is the launch's key (naming.launch_key): the profile, and a digest of ``--set``."""
        return {"ablab.study": self.study.study, "ablab.paper": self.study.paper, "ablab.table": self.study.table,
                "ablab.profile": self.profile, "mlflow.source.git.commit": self.commit,
                **({SET_TAG: json.dumps(self._sets)} if self._sets else {})}

    def _parent_run(self) -> tuple[str, bool]:
        """The launch run's id, and whether it existed (a resume reopens it through the journal)."""
        registry = self.registry
        run_id = registry.data.get("parent")
        if registry.data.get("experiment") != self.experiment_id:  # the end of `ablab run` prints the UI's URL from it
            registry.data["experiment"] = self.experiment_id
            registry.save()
        if run_id:
            return run_id, True
        run = self.client.create_run(self.experiment_id, run_name=f"{self.study.study}:{self.profile}",
                                     tags={**self._common_tags(), "ablab.role": "launch"})
        registry.data["parent"] = run.info.run_id
        registry.save()
        return run.info.run_id, False

    def _rows_of(self, point: dict[str, Any]) -> list[str]:
        """The table rows this training point fills (its trial's, and of those the ones its grid values match)."""
        layout = self.study.table_layout
        return [r.label for r in layout.rows if r.trial == point["trial"]
                and all(point.get(k) == v for k, v in r.where.items())] if layout else []

    def trial_tags(self, key: str, point: dict[str, Any]) -> dict[str, str]:
        return {**self._common_tags(), "mlflow.parentRunId": self.parent, "ablab.role": "trial",
                "ablab.trial_key": key, "ablab.trial": point["trial"], "ablab.seed": str(point["seed"]),
                "ablab.rows": json.dumps(self._rows_of(point)),
                "ablab.columns": json.dumps(self.study.table_layout.columns if self.study.table_layout else []),
                "ablab.variants": json.dumps([v["name"] for v in self.configs[key]["inference"]["variants"]])}

    def trial_params(self, key: str, point: dict[str, Any]) -> list[list[str]]:
        params = [[k, v[:6000]] for k, v in flatten(self.configs[key]).items()]
        return params + [[f"grid.{k}", json.dumps(v)] for k, v in point.items() if k not in ("trial", "seed")]

    def start_trial(self, key: str, point: dict[str, Any]) -> None:
        """Once per trial and process: its run is made, or (resume, --retry-failed) reopened: one run per trial
        either way."""
        if key in self._started or key in self._finished_before:
            return
        self._started.add(key)
        queued = any(e["op"] == "create" for e in self.journal.entries_for(key))  # by a launch that died
        if key in self.registry.data["trials"] or queued:
            self.journal.write("reopen", run=key)
        else:
            self.journal.write("create", run=key, experiment=self.experiment_id, name=key,
                               tags=self.trial_tags(key, point), params=self.trial_params(key, point))

    def _tag_once(self, key: str, tags: dict[str, str]) -> None:
        """Tags of a trial's run that its results carry, written when their value changes."""
        changed = [[k, v] for k, v in tags.items() if self._tagged.get((key, k)) != v]
        if changed:
            self.journal.write("log_batch", run=key, tags=changed)
            self._tagged.update({(key, k): v for k, v in changed})

    # ---- Tune callback hooks ----

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start_trial(point_key(point_of(trial.config)), point_of(trial.config))

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.start_trial(point_key(point_of(trial.config)), point_of(trial.config))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Tune restarts the trial from its checkpoint: the failure it reported is not its end.
        self._errors.pop(point_key(point_of(trial.config)), None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = point_key(point_of(trial.config))
        if key in self._finished_before:
            return
        self.start_trial(key, point_of(trial.config))
        if result.get("error"):  # the trial's failure, as its driver saw it (kept for _finish)
            self._errors[key] = str(result["error"])
        if result.get("precision"):
            # The precision the trial's workers resolved (auto -> bf16 / fp16 / fp32) and the hardware it was
            # resolved on: two results trained differently can be told apart.
            self._tag_once(key, {"ablab.precision": str(result["precision"]),
                                 "ablab.hardware": str(result.get("hardware", ""))})
        if "resumed_at" in result:  # a restarted worker or a resumed study continued from this epoch's checkpoint
            self._tag_once(key, {"ablab.resumed_at_epoch": str(int(result["resumed_at"]))})
        epoch, done = int(result.get("epoch", 0)), bool(result.get("done"))
        logged = self._epochs_logged(key)
        # Epochs reported but never logged (the driver was killed in between) are in the trial's history: every
        # checkpoint carries it, and so does the trial folder once the trial is done.
        folder = Path(result["checkpoint_path"]) if result.get("checkpoint_path") else (
            self.artifacts_root / key if done else None)
        if epoch > 0 and folder is not None and (folder / HISTORY_FILE).is_file():
            for past in json.loads((folder / HISTORY_FILE).read_text()):
                if (int(past["epoch"]) < epoch or done) and int(past["epoch"]) not in logged:
                    self._log_epoch(key, past, int(result.get("timestamp", 0) * 1000))
                    logged.add(int(past["epoch"]))
        if epoch > 0 and epoch in logged and not done:
            return  # already in MLflow (a restarted worker or restored trial reporting again)
        self._log_epoch(key, result, int(result.get("timestamp", 0) * 1000))
        if epoch > 0:
            logged.add(epoch)

    def _epochs_logged(self, key: str) -> set[int]:
        """The epochs of a trial already in MLflow or waiting in the journal (read once per trial and process)."""
        if key not in self._logged_epochs:
            steps: set[int] = {e["epoch"] for e in self.journal.entries_for(key) if "epoch" in e}
            run_id = self.registry.data["trials"].get(key)
            if run_id:
                try:
                    steps |= {m.step for m in self.client.get_metric_history(run_id, "train/loss")}
                except Exception as err:  # noqa: BLE001
                    if not unavailable(err):
                        raise
                    log.warning(f"tracking: cannot read {key}'s logged epochs now ({type(err).__name__}); an epoch "
                                f"may be logged twice")
            self._logged_epochs[key] = steps
        return self._logged_epochs[key]

    def _log_epoch(self, key: str, result: dict[str, Any], ts: int) -> None:
        epoch = int(result.get("epoch", 0))
        metrics = []
        for k, v in result.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k.startswith("loss") or k in ("num_pos", "train_seconds"):
                if not result.get("done"):
                    metrics.append([f"train/{k}", float(v), ts, epoch])
            elif k == "eval_seconds":
                metrics.append([k, float(v), ts, epoch])
            elif "/" in k:
                variant, _, metric = k.rpartition("/")
                metrics.append([metric_key(variant, metric), float(v), ts, epoch])
        if metrics:
            self.journal.write("log_batch", run=key, metrics=metrics,
                               **({"epoch": epoch} if epoch > 0 and not result.get("done") else {}))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True)

    def _finish(self, trial, failed: bool) -> None:
        key = point_key(point_of(trial.config))
        if key in self._finished_before:
            return
        self.start_trial(key, point_of(trial.config))
        trial_dir = self.artifacts_root / key
        error_file = trial_dir / ERROR_FILE
        reason: Optional[str] = None
        if error_file.is_file():
            reason = error_file.read_text().strip() or None  # empty: written on a full disk
        reason = reason or self._errors.get(key)
        if failed and not reason:
            try:  # Tune reads the error back from the trial folder, which a full disk may have left truncated
                err = trial.get_error() if hasattr(trial, "get_error") else None
            except Exception as read_err:  # noqa: BLE001
                err = f"(Tune could not read the trial's error back: {type(read_err).__name__}: {read_err})"
            reason = str(err) if err else "trial failed (see Ray Tune logs)"
        try:
            (trial_dir / CONFIG_FILE).write_text(json.dumps(self.configs[key], indent=1))
        except OSError as err:  # a full disk must not stop the driver: the config is in the run's params too
            (trial_dir / CONFIG_FILE).unlink(missing_ok=True)
            log.warning(f"cannot write {trial_dir / CONFIG_FILE} ({err.strerror})")
        for name in TRIAL_FILES:
            if (trial_dir / name).is_file():
                self.journal.write("artifact", run=key, path=str(trial_dir / name))
        if (trial_dir / DETECTIONS_DIR).is_dir():
            self.journal.write("artifacts", run=key, path=str(trial_dir / DETECTIONS_DIR), artifact_path=DETECTIONS_DIR)
        if reason:
            self.journal.write("log_batch", run=key, tags=[["ablab.error", reason[:5000]]])
        self.journal.write("end", run=key, status="FAILED" if reason else "FINISHED")

    def on_experiment_end(self, trials, **info):
        failed = sum(1 for t in trials if t.status == "ERROR")
        # Trials still pending or running here were stopped (SIGTERM, Ctrl-C): their runs end KILLED, which
        # `ablab resume` reopens; the launch run says the study was interrupted.
        # (Tune marks a trial it stops at the end as TERMINATED too: a stopped one never reported `done`.)
        stopped = [t for t in trials if t.status != "ERROR" and not (t.last_result or {}).get("done")]
        for t in stopped:
            if "trial" not in point_of(t.config):
                continue  # restored from a Tune state that lost its config (written on a full disk)
            key = point_key(point_of(t.config))
            if key in self._started or key in self.registry.data["trials"]:
                self.journal.write("log_batch", run=key, tags=[["ablab.interrupted", "true"]])
                self.journal.write("end", run=key, status="KILLED")
        self.journal.write("log_batch", run=LAUNCH, tags=[["ablab.trials", str(len(trials))],
                                                         ["ablab.failed_trials", str(failed)],
                                                         ["ablab.interrupted_trials", str(len(stopped))]])
        self.journal.write("end", run=LAUNCH, status="KILLED" if stopped else "FINISHED")
        # A stopped study (SIGTERM, `ray job stop`) must end within its grace period: what is left stays on disk.
        left = self.journal.drain(min(FLUSH_WAIT_S, 10.0) if stopped else FLUSH_WAIT_S)
        if left:
            log.warning(f"tracking: {left} MLflow writes could not be made ({self.tracking_uri} does not answer); "
                        f"they wait in {self.journal.path}")


def log_claims(launch: Launch, tracking_uri: str, registry_path: Path):
    """Check the launch's claims against its finished runs (ablab.query.launch_claims) and put them on its run:
    metrics ``claim/<i>/ours``, ``/lo``, ``/hi``, ``/paper``, ``/power``, ``/detectable``; tags ``ablab.claim.<i>``
    (the verdict in words, the pair, the claim's kind), ``ablab.claim.<i>.reason`` where a rule kept it
    inconclusive, and ``ablab.claims`` (the count of each verdict). Returns the claims frame."""
    from .query import launch_claims
    from .evidence import verdict_text

    frame = launch_claims(launch, tracking_uri)
    now = int(time.time() * 1000)
    metrics, tags = [], []
    for _, c in frame.iterrows():
        for name in ("ours", "lo", "hi", "paper", "power", "detectable"):
            if c[name] is not None and not pd.isna(c[name]):
                metrics.append([f"claim/{c['claim']}/{name}", float(c[name]), now, 0])
        tags.append([f"ablab.claim.{c['claim']}", f"{verdict_text(c)}: {c['row']} vs {c['vs']} on "
                                                  f"{c['metric']} ({c['kind']})"[:5000]])
        if c["reason"]:
            tags.append([f"ablab.claim.{c['claim']}.reason", c["reason"]])
    counts = frame.apply(verdict_text, axis=1).value_counts()
    tags.append(["ablab.claims", ", ".join(f"{n} {v}" for v, n in counts.items())])
    write_now(tracking_uri, registry_path, "log_batch", run=LAUNCH, metrics=metrics, tags=tags)
    return frame
