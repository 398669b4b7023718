"""What runs inside a trial: the Tune trainable, which trains the trial's config in its own process (one
worker) or on a Ray Train TorchTrainer's workers (DDP), and the loop both run: it hands the detector engine
its checkpoint and reports every epoch back through Ray.

Nothing here writes MLflow: workers report through Ray; the study driver is the single MLflow writer.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from functools import partial
from typing import Any, Callable, Optional

from .journal import caused_by_full_disk, disk_full, write_atomic
from .naming import ERROR_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, point_key, point_of, write_eval_outputs


NON_FINITE = "NonFiniteLoss"
"""How a non-finite loss's reason starts in a trial's ERROR_FILE."""


def _rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


def _write_reason(path: Path, text: str) -> None:
    """Record why a trial failed in its folder; on a full disk the reason still reaches MLflow, through the
    exception Tune records."""
    try:
        path.write_text(text)
    except OSError as err:
        path.unlink(missing_ok=True)  # an empty file would say "no reason"
        print(f"[trial] cannot write {path} ({err.strerror}); the failure is reported without it", flush=True)


def _run_facts(state) -> dict[str, Any]:
    """What every report carries for the trial's run tags: the resolved precision, the hardware it was resolved
    on, and the epoch this worker resumed from (when it started from a checkpoint)."""
    facts: dict[str, Any] = {"precision": state.precision.name, "hardware": state.hardware}
    if state.resumed_at is not None:
        facts["resumed_at"] = state.resumed_at
    return facts


STORAGE_MARKER = ".validate_storage_marker"
"""The file Ray Train's driver writes in a run's folder for its workers to find (ray.train.v2 constants)."""

STATE_FILE = "state.pt"
"""A checkpoint's training state (engine.TrainState.checkpoint), beside its HISTORY_FILE."""


def _save_state(state, folder: Path) -> None:
    """The training state and its history into ``folder``, each file replaced whole: the history first, so the
    state never claims epochs the history lacks."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / HISTORY_FILE, json.dumps(state.history))
    write_atomic(folder / STATE_FILE, partial(torch.save, state.checkpoint()))


def _load_state(folder: Path, required: bool = False) -> Optional[dict[str, Any]]:
    """The training state in ``folder``; None where there is none, unless ``required`` (a checkpoint Train
    handed back must hold one: training from scratch instead would hide a lost checkpoint)."""
    import torch

    if not (folder / STATE_FILE).is_file():
        if required:
            raise RuntimeError(f"checkpoint {folder} has no {STATE_FILE}: it was written where this worker cannot "
                               f"read it (a run folder that is not shared by every node?)")
        return None
    # Tensors and numbers only: a checkpoint on shared storage must never be able to run code here.
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def _progress(cfg, state, epoch_metrics: dict[str, float]) -> dict[str, Any]:
    """An epoch's report, the trial's progress first: Tune's trial table shows the first metrics a trial
    reports (epoch, epochs, the ETA from the mean epoch so far)."""
    seconds = [h["train_seconds"] for h in state.history if "train_seconds" in h]
    left = cfg.train.epochs - int(epoch_metrics.get("epoch", state.epoch))
    metrics: dict[str, Any] = {"epoch": float(epoch_metrics.get("epoch", state.epoch)),
                               "epochs": float(cfg.train.epochs),
                               "eta_s": round(sum(seconds) / len(seconds) * left, 1) if seconds else None}
    metrics.update({k: float(v) for k, v in epoch_metrics.items()})
    metrics.update(_run_facts(state))
    return metrics


Report = Callable[[Any, dict[str, Any]], None]
"""``report(state, metrics)``: hand Ray one report, with a checkpoint of ``state`` unless it is None."""


def run_trial(config: dict[str, Any], trial_dir: Path, resume: Optional[dict], rank: int, report: Report) -> None:
    """Train (from ``resume`` if given), reporting and checkpointing every epoch; then evaluate every variant
    (rank 0) and report the final metrics. A non-finite loss is reported as the trial's failure reason
    instead of being retried. Both executors run this: in the trial's process, or on each Train worker."""
    from detector.config import parse_config
    from detector.engine import NonFiniteLoss, evaluate, train

    import torch

    cfg = parse_config(config)
    try:
        state = train(cfg, checkpoint=resume, on_epoch_end=lambda s, m: report(s, _progress(cfg, s, m)))
    except NonFiniteLoss as err:
        # Deterministic: restarting the worker would only hit it again. Record it and stop this trial.
        if rank == 0:
            _write_reason(trial_dir / ERROR_FILE, f"{NON_FINITE}: {err}\n")
        report(None, {"failed": 1.0, "epoch": -1.0, "error": f"{NON_FINITE}: {err}"})
        return
    final: dict[str, Any] = {"done": 1.0, "epoch": float(state.epoch), **_run_facts(state)}
    if rank == 0:
        t0 = time.perf_counter()
        result = evaluate(state.model, cfg, precision=state.precision)
        final.update(result.metrics)
        final["eval_seconds"] = time.perf_counter() - t0
        write_eval_outputs(trial_dir, result)
        (trial_dir / HISTORY_FILE).write_text(json.dumps(state.history))  # lets the driver backfill any epoch
        torch.save(state.model.state_dict(), trial_dir / MODEL_FILE)
    report(None, final)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """A Ray Train worker's loop: run_trial, with Train's checkpoints and reports."""
    import pyarrow.fs
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    rank = _rank()
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = _load_state(Path(d), required=True)
    storage = ray.train.get_context().get_storage()
    # Where the run's folder is a file system this worker shares with the driver (the embedded cluster's, or a
    # shared one), rank 0 writes each checkpoint in it, where Train keeps it, instead of into a temporary
    # folder that Train then copies. Shared: the marker file Train's driver writes there is seen here (Train's
    # own check before it copies; a node's local folder of the same path lacks it, and gets the copy, which
    # fails with Train's error).
    in_place = (isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
                and (Path(storage.experiment_fs_path) / STORAGE_MARKER).is_file())

    def report(state, metrics: dict[str, Any]) -> None:
        if state is None:
            return ray.train.report(metrics)
        if in_place:
            name = f"checkpoint_epoch{state.epoch:04d}"
            folder = nullcontext(str(Path(storage.experiment_fs_path) / name))
            where = {"checkpoint_dir_name": name, "checkpoint_upload_mode": CheckpointUploadMode.NO_UPLOAD}
        else:
            folder, where = tempfile.TemporaryDirectory(), {}
        with folder as d:
            checkpoint = None
            if rank == 0:  # its history lets the driver backfill epochs it never logged
                _save_state(state, Path(d))
                checkpoint = Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint, **where)

    run_trial(loop_config["config"], Path(loop_config["trial_dir"]), resume, rank, report)


def _fit_in_trial(config: dict[str, Any], trial_dir: Path, checkpoints: Path) -> dict[str, Any]:
    """Train in this (Tune trial) process: no worker processes to start. The checkpoint lives in the trial's
    own folder ``checkpoints``, found by name on a retry, a resume or a rebuilt Tune run alike."""
    import ray.tune

    last: dict[str, Any] = {}

    def report(state, metrics: dict[str, Any]) -> None:
        if state is not None:
            _save_state(state, checkpoints)
            metrics = {**metrics, "checkpoint_path": str(checkpoints)}  # as Train's report carries it
        last.clear()
        last.update(metrics)
        ray.tune.report(metrics)

    # A launch from before trials trained in their own process left Train's checkpoint_*/ folders here (the
    # last of them that holds a state: one written by a report Train never took may be there too).
    earlier = sorted(p for p in checkpoints.glob("checkpoint_*") if (p / STATE_FILE).is_file())
    run_trial(config, trial_dir, _load_state(checkpoints) or (_load_state(earlier[-1]) if earlier else None), 0,
              report)
    return last


def _fit_with_train(config: dict[str, Any], trial_dir: Path, checkpoints: Path, resources: dict[str, Any],
                    embedded: bool) -> dict[str, Any]:
    """Train on a TorchTrainer's ``workers`` processes (DDP), which report through this trial; Train restarts
    failed workers from the last checkpoint, found by the run's name (``checkpoints``) on a resume."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from .loopback import LoopbackTorchConfig

    gpus = resources["gpus_per_worker"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "trial_dir": str(trial_dir)},
        torch_config=LoopbackTorchConfig() if embedded else TorchConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources["workers"], use_gpu=gpus > 0,
            resources_per_worker={"CPU": resources["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}),
        run_config=ray.train.RunConfig(
            name=checkpoints.name, storage_path=str(checkpoints.parent), callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=resources["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    return trainer.fit().metrics or {}


def _refuse_known_failure(trial_dir: Path) -> None:
    """A trial that stopped on a non-finite loss fails again at once when Tune retries it (it would only hit
    the loss again); any other reason left from an earlier attempt goes. (`ablab resume --retry-failed`
    clears them all first: asked to, it trains again.)"""
    error = trial_dir / ERROR_FILE
    if error.is_file() and error.read_text().startswith(NON_FINITE):
        raise RuntimeError(f"{trial_dir.name} failed: {error.read_text().strip()}")
    error.unlink(missing_ok=True)


def trial_driver(params: dict[str, Any], *, configs: dict[str, dict], resources: dict[str, Any],
                 storage_path: str, artifacts_root: str, in_trial: bool, finished: frozenset[str] = frozenset(),
                 embedded: bool = False) -> None:
    """The Tune trainable of every trial: trains this trial's config in this process (``in_trial``) or on a
    TorchTrainer's workers. A trial in ``finished`` (its MLflow run FINISHED before this resume) only reports
    its final metrics again, marked ``finished_before``, for Tune's table. ``embedded``: the cluster is this
    machine alone, so torch.distributed stays on 127.0.0.1 (ablab.loopback)."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    key = point_key(point_of(params))
    trial_dir = Path(artifacts_root) / key
    if key in finished:
        metrics = json.loads((trial_dir / METRICS_FILE).read_text()) if (trial_dir / METRICS_FILE).is_file() else {}
        ray.tune.report({**metrics, "done": 1.0, "finished_before": 1.0,
                         "epoch": float(configs[key]["train"]["epochs"])})
        return
    trial_dir.mkdir(parents=True, exist_ok=True)
    _refuse_known_failure(trial_dir)
    config = configs[key]
    config = {**config, "train": {**config["train"], "threads": max(1, int(resources["cpus_per_worker"]))}}
    fit = _fit_in_trial if in_trial else partial(_fit_with_train, resources=resources, embedded=embedded)
    try:
        # Stable per trial: a retry, a resume or a rebuilt Tune run finds the trial's checkpoint by this name.
        metrics = fit(config, trial_dir, Path(storage_path) / f"train-{key}")
    except Exception as err:
        reason = traceback.format_exc()[-4000:]
        # Told by the file system, not by the text: the driver ends the study with one line (runner.run_study).
        full = caused_by_full_disk(err) or disk_full(trial_dir) or disk_full(Path(storage_path))
        _write_reason(trial_dir / ERROR_FILE, reason)
        # Also through Tune, to the driver's logger: on a full disk neither that file nor Tune's own error file
        # can be written.
        ray.tune.report({"failed": 1.0, "epoch": -1.0, "error": reason, "disk_full": float(full)})
        raise
    error = trial_dir / ERROR_FILE
    if error.is_file() or metrics.get("failed"):
        reason = error.read_text().strip() if error.is_file() else metrics.get("error", "failed")
        raise RuntimeError(f"trial {trial_id} ({key}) failed: {reason}")


TRAIN_ENV = {
    # Train V2 polls workers every 2 s by default, which costs ~2 s per report; 0.2 s here.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Train V2 sends a worker's print() to the console and again through the root logger: every line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
"""Ray Train settings of every trial: in this process's environment (the embedded cluster inherits it) and in
the runtime env of a cluster that is joined or a job that is submitted."""


def set_train_env() -> dict[str, str]:
    """Set TRAIN_ENV where the environment does not already; returns those it set."""
    missing = {k: v for k, v in TRAIN_ENV.items() if k not in os.environ}
    os.environ.update(missing)
    return missing
