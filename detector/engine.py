"""The engine that runs a detector: training loop and evaluation. No Ray, no MLflow: the platform
drives it through ``on_epoch_end`` and checkpoints it hands back in."""
from __future__ import annotations

import os
import pickle
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import Config, ConfigError, VariantConfig
from .data.datasets import DetectionSet, build_split
from .data.loader import make_loader
from .model import Detector, build_detector
from .precision import Precision, hardware_summary, resolve_precision
from .evaluator import DetectionEvaluator, EvalResult
from .scoring import Selector, raw_predictions


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf; the message says when and which term."""


def select_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _finite_everywhere(nonfinite: torch.Tensor, world: int) -> bool:
    """Whether no DDP worker counted a non-finite loss (``nonfinite``: this worker's count, on its device):
    all of them stop together, none waits in an all-reduce. The one host sync of the check."""
    bad = nonfinite.reshape(1).clone()  # all_reduce sums in place
    if world > 1:
        dist.all_reduce(bad)
    return bool(bad.item() == 0)


def _run_precision(requested: str, device: torch.device, checkpoint: Optional[dict], world: int) -> Precision:
    """The run's precision: the checkpoint's on resume, else ``requested`` resolved by rank 0, whose choice
    every DDP worker takes (workers on different hardware still train one model in one precision)."""
    if checkpoint is not None and checkpoint.get("precision"):
        return resolve_precision(checkpoint["precision"], device)
    precision = resolve_precision(requested, device)  # warns here, once, if the choice is slow
    if world > 1:
        choice = [precision.name]
        dist.broadcast_object_list(choice, src=0)
        precision = Precision(choice[0], device.type)
    return precision


def lr_at(cfg: Config, epoch: int, iteration: int) -> float:
    """Linear-scaled lr with linear warmup (from warmup_ratio) and x0.1 steps at the configured epochs."""
    t = cfg.train
    base = t.lr * t.batch_size / 16
    lr = base * 0.1 ** sum(epoch >= s for s in t.steps)
    if iteration < t.warmup_iters:
        k = iteration / t.warmup_iters
        lr *= t.warmup_ratio + (1 - t.warmup_ratio) * k
    return lr


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr_at(cfg, 0, 0), momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)


@dataclass
class TrainState:
    model: Detector
    optimizer: torch.optim.Optimizer
    precision: Precision
    """Resolved once when the run starts and kept on resume (the checkpoint holds its name)."""
    hardware: str
    """What the precision was chosen on, e.g. ``cpu AVX512 (native bf16)``."""
    epoch: int = 0  # epochs completed
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_at: Optional[int] = None
    """The epoch this run continued from, when it started from a checkpoint (not saved in checkpoints)."""
    data_order: Optional[torch.Generator] = None
    """The loader's shuffling generator: saved in checkpoints, so that a resumed run draws the order the
    uninterrupted run would have drawn (the global RNG of the augmentations is seeded per epoch)."""

    def checkpoint(self) -> dict[str, Any]:
        """Tensors, numbers, strings and lists only: ``torch.load(weights_only=True)`` reads it back."""
        ckpt = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "iteration": self.iteration, "history": self.history,
                "precision": self.precision.name}
        if self.data_order is not None:
            ckpt["data_order"] = self.data_order.get_state()
        return ckpt

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.iteration, self.history = ckpt["epoch"], ckpt["iteration"], list(ckpt.get("history", []))
        self.resumed_at = self.epoch
        if self.data_order is not None and "data_order" in ckpt:
            self.data_order.set_state(ckpt["data_order"])


def train(cfg: Config, *, checkpoint: Optional[dict] = None,
          on_epoch_end: Optional[Callable[[TrainState, dict[str, float]], None]] = None,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> TrainState:
    """Train ``cfg`` for its epochs (resuming from ``checkpoint`` if given). Under torch.distributed the
    model is wrapped in DDP and each worker reads its shard; the batch size is the global one."""
    run = build_training(cfg, checkpoint, log)
    validate = _epoch_validation(cfg) if run.rank == 0 and cfg.train.val_every else None
    for epoch in range(run.state.epoch, cfg.train.epochs):
        epoch_metrics = train_one_epoch(run, cfg, epoch, log)
        if validate is not None and run.state.epoch % cfg.train.val_every == 0:
            epoch_metrics.update(validate(run.state))  # the same dict as the epoch's history entry
        if on_epoch_end is not None:
            on_epoch_end(run.state, epoch_metrics)
    return run.state


def _epoch_validation(cfg: Config) -> Optional[Callable[[TrainState], dict[str, float]]]:
    """A function that scores the model's first variant on the first ``train.val_images`` val images:
    ``{"val/AP": ..., "val/AP50": ...}`` (VOC: ``val/mAP``, ``val/mAP50``). None for a split without labels.
    Torch's RNG is reseeded at every epoch's start, so this changes nothing of the training that follows."""
    full = build_split(cfg.data, cfg.data.val_split)
    if not full.labelled:
        return None
    subset = DetectionSet(full.name, full.records[:cfg.train.val_images], full.classes, coco_gt=full.coco_gt)
    variant = cfg.variants()[:1]
    keys = ("AP", "AP50") if "coco" in cfg.inference.metrics else ("mAP", "mAP50")

    def validate(state: TrainState) -> dict[str, float]:
        metrics = evaluate(state.model, cfg, subset, variant, state.precision, log=lambda m: None,
                           intervals=False).metrics
        return {f"val/{k}": metrics[f"{variant[0].name}/{k}"] for k in keys}

    return validate


@dataclass
class Training:
    """What one training run holds besides its state: the (DDP-wrapped) network, the loader of this worker's
    shard, the grad scaler (fp16 only) and where in torch.distributed it runs."""

    state: TrainState
    net: nn.Module
    loader: Any
    scaler: Optional[torch.amp.GradScaler]
    device: torch.device
    rank: int
    world: int


def build_training(cfg: Config, checkpoint: Optional[dict], log: Callable[[str], None]) -> Training:
    """Model, optimizer, precision and loader of a run (restored from ``checkpoint`` if given)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    rank, world = _world()
    device = select_device()
    precision = _run_precision(cfg.train.precision, device, checkpoint, world)
    train_set = build_split(cfg.data, cfg.data.train_split)
    model = build_detector(cfg.model, len(train_set.classes)).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = TrainState(model, build_optimizer(model, cfg), precision, hardware_summary(device))
    if rank == 0:
        log(f"[train] precision {precision.name} (train.precision: {cfg.train.precision}) on {state.hardware}")
    per_worker = max(1, cfg.train.batch_size // world)
    loader = make_loader(train_set, cfg.data, per_worker, train=True, workers=_loader_workers(cfg, device),
                         seed=cfg.train.seed, distributed=world > 1)
    state.data_order = loader.generator
    if checkpoint is not None:
        state.restore(checkpoint)
        log(f"[train] resumed at epoch {state.epoch}, iteration {state.iteration}")
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if cfg.train.compile:
        # A reused trial process compiles each trial's model anew: without a reset, the models of earlier
        # trials fill dynamo's recompile limit and later ones silently run eager.
        torch._dynamo.reset()
        net = torch.compile(net)  # state dicts stay the plain model's
    scaler = torch.amp.GradScaler(device.type) if precision.needs_grad_scaler else None
    shard = len(loader.sampler) if world > 1 else len(train_set)
    log(f"[train] rank {rank}/{world}: {shard} of {len(train_set)} images, {len(train_set.classes)} classes, "
        f"{len(loader)} iters/epoch x {cfg.train.epochs} epochs on {device} ({precision.name})")
    return Training(state, net, loader, scaler, device, rank, world)


def _loader_workers(cfg: Config, device: torch.device) -> int:
    if cfg.train.loader_workers is not None:
        return cfg.train.loader_workers
    if device.type == "cpu":
        return 0
    return min(4, max(1, (cfg.train.threads or os.cpu_count() or 2) - 1))


def train_one_epoch(run: Training, cfg: Config, epoch: int, log: Callable[[str], None]) -> dict[str, float]:
    """One pass over the loader (epoch is 0-based); returns the epoch's mean loss terms, its number and its
    wall time, also appended to ``run.state.history``."""
    state, precision, loader = run.state, run.state.precision, run.loader
    model = state.model
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    torch.manual_seed(cfg.train.seed * 1000 + epoch)
    run.net.train()
    iters_per_epoch = len(loader)
    log_every = max(1, iters_per_epoch // 4)
    # On a GPU every host read waits for the queued kernels: the loss terms add up on the device and the
    # non-finite check reads its count at log intervals (every worker at the same iterations, as it is a
    # collective). On a CPU a read costs nothing, and every step is checked before its update.
    check_every = 1 if run.device.type == "cpu" else log_every
    sums: dict[str, torch.Tensor] = {}
    nonfinite = torch.zeros((), device=run.device)
    t0, seen = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        batch = batch.to(run.device)
        images = batch.images.contiguous(memory_format=torch.channels_last) if precision.channels_last else batch.images
        for g in state.optimizer.param_groups:
            g["lr"] = lr_at(cfg, epoch, state.iteration)
        with precision.autocast():
            losses = model.criterion(*run.net(images), batch.targets)
        loss = losses["loss"]
        nonfinite += ~torch.isfinite(loss.detach())
        if ((i + 1) % check_every == 0 or i + 1 == iters_per_epoch) and not _finite_everywhere(nonfinite, run.world):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            since = "" if check_every == 1 else f" (or in the {check_every - 1} before it)"
            raise NonFiniteLoss(f"non-finite loss at epoch {epoch + 1}, iteration {state.iteration}{since} "
                                f"(this worker's terms: {terms})")
        state.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(state.optimizer)
        else:
            loss.backward()
        if cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        if run.scaler is not None:
            run.scaler.step(state.optimizer)
            run.scaler.update()
        else:
            state.optimizer.step()
        state.iteration += 1
        seen += batch.images.shape[0]
        for k, v in losses.items():
            sums[k] = sums[k] + v.detach().double() if k in sums else v.detach().double()  # as Python floats add
        if run.rank == 0 and (i + 1) % log_every == 0:
            rate = seen / (time.perf_counter() - t0)
            log(f"[train] epoch {epoch + 1}/{cfg.train.epochs} iter {i + 1}/{iters_per_epoch} "
                f"loss {float(loss.detach()):.4f} lr {lr_at(cfg, epoch, state.iteration):.4g} {rate:.1f} img/s")
    state.epoch = epoch + 1
    epoch_metrics = {k: float(v) / max(1, iters_per_epoch) for k, v in sums.items()}
    epoch_metrics["epoch"] = state.epoch
    epoch_metrics["train_seconds"] = time.perf_counter() - t0
    state.history.append(epoch_metrics)
    return epoch_metrics


@torch.no_grad()
def evaluate(model: Detector, cfg: Config, val_set: Optional[DetectionSet] = None,
             variants: Optional[list[VariantConfig]] = None, precision: Optional[Precision] = None,
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
             intervals: bool = True) -> EvalResult:
    """One inference pass over the val split; every variant is selected from it and scored by a
    DetectionEvaluator: COCO (and VOC) metrics and confidence/IoU_eval correlations per variant, and
    (``intervals``) each AP's bootstrap over the images. ``precision``: the one the model trained in (default:
    ``cfg.train.precision`` resolved on the model's device)."""
    device = next(model.parameters()).device
    precision = precision or resolve_precision(cfg.train.precision, device)
    val_set = val_set or build_split(cfg.data, cfg.data.val_split)
    variants = variants or cfg.variants()
    evaluator = DetectionEvaluator(val_set, variants, cfg.inference, intervals, log)
    select = Selector(variants, cfg.inference)
    truth = any(v.quality_source == "truth" for v in variants)  # IoU_truth (B, N, G) only where a variant reads it
    loader = make_loader(val_set, cfg.data, max(1, min(cfg.train.batch_size, 8)), train=False)
    model.eval()
    t0 = time.perf_counter()
    for batch in loader:
        t = time.perf_counter()
        batch = batch.to(device)
        with precision.autocast():
            out, priors = model(batch.images)
        raw = raw_predictions(out, priors, model.family, batch.targets if truth else None, batch.image_sizes)
        if device.type != "cpu":  # the network stays busy on its device; selection and metrics run on the host
            raw = raw.cpu()
        t1 = time.perf_counter()
        selected = select(raw)
        evaluator.seconds["forward"] += t1 - t
        evaluator.seconds["select"] += time.perf_counter() - t1
        evaluator.process(batch, selected)
    log(f"[eval] {len(val_set)} images, {len(variants)} variant(s) in {time.perf_counter() - t0:.1f}s")
    return evaluator.evaluate()


def read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint file (a training state or a bare state dict), read as tensors, numbers, strings and lists
    only (``weights_only``): a file that needs any other object, e.g. one that would run code, is refused."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        # torch's message ends in advice to switch the check off, i.e. to run the file's code: keep only
        # what it found.
        found = [line.strip() for line in str(err).splitlines() if "Unsupported" in line or "global" in line.lower()]
        reason = (found[0] if found else str(err).strip().splitlines()[0]).split(". Please")[0][:200]
        raise ConfigError(f"--checkpoint {path}: not a checkpoint of tensors and numbers, refused without "
                          f"running it ({type(err).__name__}: {reason})") from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"--checkpoint {path}: holds a {type(ckpt).__name__}, not a state dict")
    return ckpt


def model_from_checkpoint(cfg: Config, ckpt: dict[str, Any], num_classes: int, path: str = "checkpoint"
                          ) -> tuple[Detector, Precision]:
    """The model of ``cfg`` with the checkpoint's weights, on this machine's device, and the precision to run
    it in (the one it trained in, when the checkpoint says)."""
    device = select_device()
    model = build_detector(cfg.model, num_classes).to(device)
    try:
        model.load_state_dict(ckpt["model"] if "model" in ckpt else ckpt)
    except RuntimeError as err:  # another architecture, backbone or class count
        detail = " ".join(str(err).split())[:300]
        raise ConfigError(f"--checkpoint {path}: its weights do not fit the config's model "
                          f"(model.arch {cfg.model.arch}, model.backbone.name {cfg.model.backbone.name}, "
                          f"{num_classes} classes): {detail}") from None
    precision = resolve_precision(ckpt.get("precision") or cfg.train.precision, device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, precision
