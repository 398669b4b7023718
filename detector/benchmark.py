"""How long one training step and one inference forward of a config take on this machine: the measurement the
platform's cost estimates scale up (``ablab plan``, and the estimate ``ablab run`` prints). No Ray, no MLflow.

It runs the engine's own code: ``build_training`` builds the model, optimizer, precision (``auto`` resolved as a
trial resolves it) and loader, ``train_one_epoch`` trains a warm-up step and then the timed steps, and
``evaluate`` times the forward pass, so what is timed is what a trial runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from .config import Config
from .data.datasets import DetectionSet, build_split

MAX_STEPS = 3
"""Timed steps after the warm-up step; fewer where the warm-up step says they would overrun the budget."""


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class StepTiming:
    """One config's costs on this machine, in seconds."""

    step_s: float
    """One training step of ``batch`` images: forward, loss, backward, update, and loading the batch (the
    mean of ``steps`` steps after one warm-up step)."""
    batch: int
    """Images per step (one worker's share of the global batch)."""
    steps: int
    forward_s_per_image: float
    """Inference (network + decoding, no post-processing) per val image, at evaluation's batch size."""
    setup_s: float
    """build_training: data split, model, optimizer, loader."""
    precision: str
    """What ``train.precision`` resolved to here (``auto`` -> bf16 / fp16 / fp32)."""
    hardware: str
    """What it was resolved on, e.g. ``cpu AVX512 (native bf16)``."""
    threads: int
    """torch's intra-op threads during the measurement."""
    seconds: float
    """What the measurement itself took."""


def _first(ds: DetectionSet, start: int, stop: int) -> DetectionSet:
    return DetectionSet(ds.name, ds.records[start:stop], ds.classes, coco_gt=ds.coco_gt, labelled=ds.labelled)


def time_training(cfg: Config, budget_s: float = 10.0, eval_batches: int = 2) -> StepTiming:
    """Time ``cfg``'s training step and inference forward here (``cfg.train.batch_size`` images per step, on
    ``cfg.train.threads`` threads: pass one worker's share and threads). The timed steps run on the first
    images of the train split, the forward passes on the first ``eval_batches`` batches of the val split.

    ``budget_s`` bounds the timed steps: after a warm-up step of w seconds, min(MAX_STEPS, budget_s / w) steps
    (at least one) are timed, so a step of minutes (a paper model on a CPU) costs one step, not three.
    """
    import torch  # here: the platform reads MAX_STEPS without importing torch

    from .data.loader import make_loader
    from .engine import build_training, evaluate, train_one_epoch

    t0 = time.perf_counter()
    batch = cfg.train.batch_size
    probe = cfg.model_copy(deep=True)
    probe.data.max_images = batch * (1 + MAX_STEPS)
    probe.train.val_every = 0
    probe.model.backbone.pretrained = "none"  # weights do not change a step's cost; no file is needed
    run = build_training(probe, None, _quiet)
    setup_s = time.perf_counter() - t0
    images = run.loader.dataset.ds
    workers = run.loader.num_workers

    def epoch_over(start: int, stop: int, epoch: int) -> float:
        loader = make_loader(_first(images, start, stop), probe.data, batch, train=True, workers=workers,
                             seed=probe.train.seed)
        return train_one_epoch(replace(run, loader=loader), probe, epoch, _quiet)["train_seconds"]

    # The first step pays for allocations and kernel selection (oneDNN primitives, cuDNN autotuning).
    warm_s = epoch_over(0, batch, 0)
    steps = max(1, min(MAX_STEPS, int(budget_s / max(warm_s, 1e-6)), len(images) // batch - 1))
    step_s = epoch_over(batch, batch * (1 + steps), 1) / steps if len(images) >= 2 * batch else warm_s

    val = build_split(probe.data, probe.data.val_split)
    eval_batch = max(1, min(batch, 8))  # evaluate's own batch size
    n = min(len(val), eval_batch * (1 + eval_batches))
    variant = probe.variants()[:1]
    evaluate(run.state.model, probe, _first(val, 0, eval_batch), variant, run.state.precision, _quiet,
             intervals=False)  # warm-up: eval mode, evaluate's batch shape
    timed = _first(val, eval_batch, n) if n > eval_batch else _first(val, 0, eval_batch)
    forward = evaluate(run.state.model, probe, timed, variant, run.state.precision, _quiet,
                       intervals=False).seconds["forward"] / len(timed)
    return StepTiming(step_s, batch, steps, forward, setup_s, run.state.precision.name, run.state.hardware,
                      torch.get_num_threads(), time.perf_counter() - t0)


def _main() -> None:
    """``python -m detector.benchmark``: ``{"budget_s": B, "configs": [raw config, ...]}`` as JSON on stdin, each
    config's StepTiming (a JSON list) as stdout's last line. The platform times a study's configs so, keeping
    torch out of its driver process."""
    import json
    import sys
    from dataclasses import asdict

    from .config import parse_config

    job = json.loads(sys.stdin.read())
    print(json.dumps([asdict(time_training(parse_config(c), job["budget_s"])) for c in job["configs"]]), flush=True)


if __name__ == "__main__":
    _main()
