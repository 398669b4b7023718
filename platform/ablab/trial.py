"""What runs inside a trial: a short driver that builds a Ray Train TorchTrainer, and the per-worker loop
that hands the detector engine its checkpoint and reports every epoch back through Ray Train.

Nothing here writes MLflow: workers report through Ray; the study driver is the single MLflow writer.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .naming import ERROR_FILE, HISTORY_FILE, MODEL_FILE, point_key, point_of, write_eval_outputs


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train, checkpointing and reporting every epoch; then evaluate every variant (rank 0) and report the
    final metrics. A non-finite loss is reported as the trial's failure reason instead of being retried."""
    import ray.train
    import torch  # here, not at module level: the trial driver process never needs it
    from ray.train import Checkpoint

    from detector.config import parse_config
    from detector.engine import NonFiniteLoss, evaluate, train

    cfg = parse_config(loop_config["config"])
    trial_dir = Path(loop_config["trial_dir"])
    rank = _rank()
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            # Tensors and numbers only: a checkpoint on shared storage must never be able to run code here.
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)

    def report(state, epoch_metrics: dict[str, float]) -> None:
        # First the trial's progress: Tune's trial table shows the first metrics a trial reports.
        seconds = [h["train_seconds"] for h in state.history if "train_seconds" in h]
        left = cfg.train.epochs - int(epoch_metrics.get("epoch", state.epoch))
        metrics: dict[str, Any] = {"epoch": float(epoch_metrics.get("epoch", state.epoch)),
                                   "epochs": float(cfg.train.epochs),
                                   "eta_s": round(sum(seconds) / len(seconds) * left, 1) if seconds else None}
        metrics.update({k: float(v) for k, v in epoch_metrics.items()})
        metrics.update(_run_facts(state))
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save(state.checkpoint(), Path(d) / "state.pt")
                # Lets the driver backfill epochs it never logged (e.g. it was killed in between).
                (Path(d) / HISTORY_FILE).write_text(json.dumps(state.history))
                checkpoint = Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)

    try:
        state = train(cfg, checkpoint=resume, on_epoch_end=report)
    except NonFiniteLoss as err:
        # Deterministic: restarting the worker would only hit it again. Record it and stop this trial.
        if rank == 0:
            _write_reason(trial_dir / ERROR_FILE, f"NonFiniteLoss: {err}\n")
        ray.train.report({"failed": 1.0, "epoch": -1.0, "error": f"NonFiniteLoss: {err}"})
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
    ray.train.report(final)


def trial_driver(params: dict[str, Any], *, configs: dict[str, dict], resources: dict[str, Any],
                 storage_path: str, artifacts_root: str, embedded: bool = False) -> None:
    """The Tune trainable (needs no CPU of its own): one TorchTrainer for this trial's config. ``embedded``:
    the cluster is this machine alone, so torch.distributed stays on 127.0.0.1 (ablab.loopback)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from .loopback import LoopbackTorchConfig

    trial_id = ray.tune.get_context().get_trial_id()
    key = point_key(point_of(params))
    trial_dir = Path(artifacts_root) / key
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / ERROR_FILE).unlink(missing_ok=True)
    config = configs[key]
    config = {**config, "train": {**config["train"], "threads": max(1, int(resources["cpus_per_worker"]))}}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "trial_dir": str(trial_dir)},
        torch_config=LoopbackTorchConfig() if embedded else TorchConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources["workers"], use_gpu=resources["gpus_per_worker"] > 0,
            resources_per_worker={"CPU": resources["cpus_per_worker"], **({"GPU": resources["gpus_per_worker"]}
                                                                          if resources["gpus_per_worker"] else {})}),
        run_config=ray.train.RunConfig(
            name=f"train-{key}",  # stable per trial: resume finds its checkpoints by this name
            storage_path=storage_path,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=resources["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        reason = traceback.format_exc()[-4000:]
        _write_reason(trial_dir / ERROR_FILE, reason)
        # Also through Tune, to the driver's logger: on a full disk neither that file nor Tune's own error file
        # can be written.
        ray.tune.report({"failed": 1.0, "epoch": -1.0, "error": reason})
        raise
    error = trial_dir / ERROR_FILE
    if error.is_file() or (result.metrics or {}).get("failed"):
        reason = error.read_text().strip() if error.is_file() else result.metrics.get("error", "failed")
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
