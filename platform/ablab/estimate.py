"""What a study will cost before it runs: each trial's seconds, the wall time once the trials are packed into the
cluster's concurrency, and the CPU- and GPU-hours (``ablab plan``, and the estimate ``ablab run`` prints at its start
and checks at its end).

Where a trial's time comes from:

- **measured here**: each distinct model config (``cost_key``) is timed by ``detector.benchmark.time_training``: a
  warm-up step, then up to 3 training steps at the profile's image size, one worker's batch and thread count
  (``cpus_per_worker``, what a concurrent trial gets), in the precision ``auto`` picks here; then inference forward
  passes. It runs in child processes, as many at once as trials will share this machine's cores (``measure``);
  they keep torch out of the driver, and ``CUDA_VISIBLE_DEVICES`` empty for a CPU profile, as Ray gives a trial
  that holds no GPU.
- **the throughput table** (studies/profiles/gpu_throughput.yaml, or ``--throughput-table``): for a GPU profile
  planned on a machine without CUDA; per-GPU images/s at a reference size, scaled by pixels. ``--gpu-throughput``
  replaces its training figure.

One trial (seconds)::

    train    = epochs x ceil(train images / batch) x step_s            (DDP: step_s of one worker's share)
    val      = (epochs // val_every) x min(val_images, val images) x (forward + POST_S)   (first variant only)
    evaluate = val images x (forward + variants x POST_S)
    total    = train + val + evaluate + TRIAL_OVERHEAD_S[executor] + setup_s

and the study: STUDY_OVERHEAD_S + the trials list-scheduled in grid order onto ``concurrency`` slots (each starts
when a slot frees, as Ray Tune starts them). Not modelled: other programs on the machine, DDP's gradient
all-reduce (a CPU trial on 2 workers of 1 thread was measured 1.5x slower than 1 worker of 2: bench/ddp_cpu.py), and the time data loading hides on a GPU.
"""
from __future__ import annotations

import heapq
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from detector.benchmark import MAX_STEPS
from detector.config import Config, ConfigError, format_validation_error, read_yaml_mapping
from detector.data import build_split

from .cluster import start_ray
from .launch import Launch, Plan, plan_study
from .logs import log
from .study import Resources

THROUGHPUT_TABLE = Path(__file__).resolve().parents[2] / "studies" / "profiles" / "gpu_throughput.yaml"

POST_S = 0.00086
"""Seconds per val image and inference variant after the forward pass: rescoring, top-k, NMS (select 0.89 s),
the detections as columns (0.03 s), COCO metrics and correlations (0.37 s) and the bootstrap (0.29 s) of 10
variants on 200 images with 100 detections each: 1.71 s / 2000 (bench/README.md, bench/eval.py)."""

TRIAL_OVERHEAD_S = {"tune": 2.2, "train": 14.7}
"""Seconds a trial costs beyond its training and evaluation, by executor: 2.2 s in the Tune trial's process, 14.7 s
on a TorchTrainer (its six fresh processes) (bench/README.md, bench/orchestration.py). The measured
``setup_s`` (data split, model, loader) is added to it."""

STUDY_OVERHEAD_S = 12.0
"""Seconds a study costs beyond its trials: Ray's start, Tune's setup and end, the claims' check. bench/orchestration.py
measured `ablab run` at 3.0 s per trial more than its trials alone, over 4 trials (bench/README.md)."""

MAX_BENCH_SHARE = 0.05
"""`ablab run` measures only where its benchmark's training steps are at most this share of the study's (a
table3 smoke run: 8 of 1,600); the fixed part, ~3 s of torch's import and each config's setup, comes on top."""

BENCH_BUDGET_S = 10.0
"""Each distinct config's timed steps stop at about this many seconds (at least one step after the warm-up)."""


# ---- the distinct configs ----------------------------------------------------------------------------------------

def executor_of(res: Resources) -> str:
    return "tune" if res.in_trial else "train"


def cost_key(cfg: Config, res: Resources) -> str:
    """The fields that change what a training step and a forward pass cost, as one string: trials with the same
    key share one benchmark.

    The rule: the network (arch, backbone name / norm / frozen and deformable stages, FPN width, head depth / width /
    norm, quality branch, centerness), the data as it reaches the network (kind, root, image size, multi-scale
    range, which also fixes the classes), one worker's batch and threads, the requested precision, compile and
    loader workers. Not in it, as they leave a step's cost unchanged: seeds, inference variants and thresholds, loss
    kinds and weights, the quality target's detach, assigner rules and thresholds, lr and schedule, epochs and
    image counts (which scale the time but not the step), and the weights a backbone starts from.
    """
    m, d, t = cfg.model, cfg.data, cfg.train
    network = {"arch": m.arch, "backbone": m.backbone.model_dump(exclude={"pretrained"}), "fpn_width": m.fpn_width,
               "head": m.head.model_dump(), "quality": m.quality.branch, "centerness": m.centerness}
    data = {"kind": d.kind, "root": d.root, "train_split": d.train_split, "short": d.short, "long": d.long,
            "train_short_range": d.train_short_range}
    step = {"batch": worker_batch(cfg, res), "threads": worker_threads(res), "precision": t.precision,
            "compile": t.compile, "loader_workers": t.loader_workers}
    return json.dumps({"network": network, "data": data, "step": step}, sort_keys=True)


def distinct_configs(plan: Plan, res: Resources) -> dict[str, list[str]]:
    """``cost_key`` -> the keys of the trials (the Plan's, in grid order) that share its benchmark."""
    groups: dict[str, list[str]] = {}
    for key, cfg in plan.configs.items():
        groups.setdefault(cost_key(cfg, res), []).append(key)
    return groups


def worker_batch(cfg: Config, res: Resources) -> int:
    return max(1, cfg.train.batch_size // res.workers)


def worker_threads(res: Resources) -> int:
    """What trial.py gives a trial's torch: one thread per CPU it holds."""
    return max(1, int(res.cpus_per_worker))


def describe(cfg: Config, res: Resources) -> str:
    """A distinct config in a few words, e.g. ``retinanet resnet10 fpn64 head 2x64 gn, quality iou, 128x128 px, batch 8``."""
    m = cfg.model
    parts = [f"{m.arch} {m.backbone.name} fpn{m.fpn_width} head {m.head.depth}x{m.head.width}"
             + ("" if m.head.norm == "none" else f" {m.head.norm}"), f"quality {m.quality.branch}"]
    if m.centerness:
        parts.append("centerness")
    size = (f"{cfg.data.train_short_range[0]}-{cfg.data.train_short_range[1]}" if cfg.data.train_short_range
            else str(cfg.data.short))
    parts += [f"{size}x{cfg.data.long} px", f"batch {worker_batch(cfg, res)}"
              + (f" per worker ({cfg.train.batch_size} in all)" if res.workers > 1 else "")]
    return ", ".join(parts)


# ---- the measurements and the table ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cost:
    """What one distinct config costs per step and per image, and where the figures come from."""

    step_s: float
    """One training step of one worker's batch."""
    forward_s_per_image: float
    setup_s: float
    source: str
    """``measured here (...)`` or the table's entry and its source."""
    measured: bool
    bench_s: float = 0.0
    """What measuring it took (0 for the table)."""


def benchmark_config(cfg: Config, res: Resources) -> dict[str, Any]:
    """The config a benchmark times: one worker's share of the batch, on the threads a trial gets."""
    raw = cfg.model_dump()
    raw["train"].update(batch_size=worker_batch(cfg, res), threads=worker_threads(res))
    return raw


def measure(configs: list[dict[str, Any]], gpu: bool, copies: int = 1) -> list[Cost]:
    """Time each config (``benchmark_config``) in ``copies`` child processes at once (``python -m
    detector.benchmark``), as many as trials will share this machine's cores, so that the figure holds what they
    cost each other (two 1-thread trials on 2 cores train ~1.3x slower each than one alone); the copies' mean.
    ``gpu=False`` hides the GPUs from them."""
    import detector.config

    env = dict(os.environ)
    root = str(Path(detector.config.__file__).resolve().parents[1])  # this checkout's detector, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    children = []
    with tempfile.TemporaryDirectory() as tmp:  # every copy reads its job from the file at once: they run together
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"budget_s": BENCH_BUDGET_S, "configs": configs}))
        for _ in range(max(1, copies)):
            with job.open() as stdin:
                children.append(subprocess.Popen([sys.executable, "-m", "detector.benchmark"], text=True, env=env,
                                                 stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    runs = []
    try:
        for child in children:
            out, err = child.communicate()
            if child.returncode != 0:
                tail = " ".join(err.strip().splitlines()[-1:])[:400]
                raise ConfigError(f"the benchmark of the study's configs failed (exit {child.returncode}): {tail}")
            runs.append(json.loads(out.strip().splitlines()[-1]))
    finally:  # a failed copy (or Ctrl-C) leaves no other copy running beside the study
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    costs = []
    for timings in zip(*runs):
        mean = {k: sum(t[k] for t in timings) / len(timings) for k in ("step_s", "forward_s_per_image", "setup_s")}
        t = timings[0]
        together = f", {len(timings)} copies at once" if len(timings) > 1 else ""
        costs.append(Cost(mean["step_s"], mean["forward_s_per_image"], mean["setup_s"], measured=True,
                          bench_s=max(x["seconds"] for x in timings),
                          source=f"measured here: {t['hardware']}, {t['precision']}, {t['threads']} thread(s){together}, "
                                 f"{mean['step_s']:.3f} s/step of {t['batch']} images ({t['steps']} step(s) after a "
                                 f"warm-up), {1000 * mean['forward_s_per_image']:.1f} ms/image forward"))
    return costs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Reference(_Strict):
    gpu: str
    train_size: tuple[PositiveInt, PositiveInt]
    test_size: tuple[PositiveInt, PositiveInt]


class _Entry(_Strict):
    train_images_per_s: float = Field(gt=0)
    infer_images_per_s: float = Field(gt=0)
    source: str = Field(min_length=1)


class ThroughputTable(_Strict):
    """studies/profiles/gpu_throughput.yaml: per-GPU images/s per backbone at a reference size, with sources."""

    reference: _Reference
    backbones: dict[str, _Entry]


def load_table(path: Path = THROUGHPUT_TABLE) -> ThroughputTable:
    try:
        return ThroughputTable.model_validate(read_yaml_mapping(path, "throughput table"))
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from None


def pixels(short: float, long: float) -> float:
    """The pixels of a 4:3 image (COCO's typical 640 x 480) fitted into [short, long]."""
    return short * min(long, short * 4 / 3)


def table_cost(cfg: Config, res: Resources, table: ThroughputTable, table_path: Path,
               gpu_throughput: Optional[float] = None) -> Cost:
    """A GPU config's cost from per-GPU throughput: the table's, scaled by pixels, or ``gpu_throughput`` (training
    images/s per GPU at the profile's own size). A worker's step holds its share of the batch on its GPUs."""
    d = cfg.data
    short = sum(d.train_short_range) / 2 if d.train_short_range else d.short
    entry = table.backbones.get(cfg.model.backbone.name)
    gpus_per_worker = res.gpus_per_worker
    if gpu_throughput is None and entry is None:
        raise ConfigError(f"{table_path}: backbones: no figure for model.backbone.name {cfg.model.backbone.name!r} "
                          f"(it has {sorted(table.backbones)}): pass --gpu-throughput IMAGES_PER_S")
    if gpu_throughput is not None:
        train_ips, source = gpu_throughput, f"--gpu-throughput {gpu_throughput:g} training images/s per GPU"
    else:
        train_ips = entry.train_images_per_s * pixels(*table.reference.train_size) / pixels(short, d.long)
        source = (f"table {table_path.name}: {cfg.model.backbone.name} {entry.train_images_per_s:g} images/s per "
                  f"{table.reference.gpu} at {list(table.reference.train_size)}, {train_ips:.2f} at "
                  f"[{short:g}, {d.long}] ({entry.source})")
    test_ratio = pixels(*table.reference.test_size) / pixels(d.short, d.long)
    infer_ips = entry.infer_images_per_s * test_ratio if entry is not None else train_ips  # inference is faster
    return Cost(worker_batch(cfg, res) / (train_ips * gpus_per_worker), 1.0 / infer_ips, 0.0, source, measured=False)


# ---- trials, packing, the study -----------------------------------------------------------------------------------

@dataclass
class TrialEstimate:
    key: str
    needs: str
    """e.g. ``1 worker x 1 CPU, executor tune``."""
    epochs: int
    train_images: int
    val_images: int
    variants: int
    bench: int
    """Which distinct config (1-based) it shares a cost with."""
    train_s: float
    val_s: float
    eval_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.val_s + self.eval_s + self.overhead_s


def steps_per_epoch(cfg: Config, res: Resources, train_images: int) -> int:
    """Steps of one epoch: each worker takes its share of the images, ``worker_batch`` at a time (the engine's
    ``batch_size // workers``)."""
    return math.ceil(math.ceil(train_images / res.workers) / worker_batch(cfg, res))


def trial_seconds(cfg: Config, res: Resources, cost: Cost, train_images: int, val_images: int
                  ) -> tuple[float, float, float, float]:
    """(train, per-epoch validation, final evaluation, overhead) seconds of one trial: the module's formula."""
    t = cfg.train
    train = t.epochs * steps_per_epoch(cfg, res, train_images) * cost.step_s
    val_passes = t.epochs // t.val_every if t.val_every else 0
    val = val_passes * min(t.val_images, val_images) * (cost.forward_s_per_image + POST_S)
    evaluate = val_images * (cost.forward_s_per_image + len(cfg.variants()) * POST_S)
    return train, val, evaluate, TRIAL_OVERHEAD_S[executor_of(res)] + cost.setup_s


def pack(durations: list[float], slots: int) -> float:
    """The wall time of ``durations`` run in order on ``slots`` parallel slots, each starting on the slot that
    frees first (list scheduling, as Ray Tune starts trials): e.g. [3, 3, 2] on 2 slots -> 5."""
    free = [0.0] * max(1, slots)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


@dataclass
class StudyEstimate:
    study: str
    profile: str
    trials: list[TrialEstimate]
    costs: list[tuple[str, Cost, list[str]]]
    """Each distinct config: its description, its cost, its trials' keys."""
    res: Resources
    concurrency: int
    cluster: str
    """Whose resources set the concurrency, e.g. ``this machine (embedded cluster): 2 CPUs, 0 GPUs``."""
    wall_s: float = 0.0
    bench_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_hours(self) -> float:
        return sum(t.total_s for t in self.trials) * self.res.workers * self.res.cpus_per_worker / 3600

    @property
    def gpu_hours(self) -> float:
        return sum(t.total_s for t in self.trials) * self.res.workers * self.res.gpus_per_worker / 3600

    @property
    def measured(self) -> bool:
        return all(c.measured for _, c, _ in self.costs)

    @property
    def source(self) -> str:
        """Where the step costs come from, in a few words: ``measured here`` or the table's file."""
        kinds = {"measured here" if c.measured else c.source.split(":")[0] for _, c, _ in self.costs}
        return " and ".join(sorted(kinds))

    def summary(self) -> str:
        hours = f"{self.gpu_hours:.2f} GPU-hours, " if self.res.gpus_per_worker else ""
        waves = math.ceil(len(self.trials) / self.concurrency)
        return (f"estimate: {duration(self.wall_s)} wall ({len(self.trials)} trials, {self.concurrency} at a time: "
                f"{waves} wave{'s' if waves != 1 else ''}, + {duration(STUDY_OVERHEAD_S)} study start and end), "
                f"{hours}{self.cpu_hours:.2f} CPU-hours; step costs {self.source}")

    def lines(self) -> list[str]:
        out = [f"study {self.study}, profile {self.profile}: {len(self.trials)} trials"]
        width = max(len(t.key) for t in self.trials)
        out.append(f"  {'trial':<{width}}  {'needs':<34} epochs  train/val images  variants  config  estimate")
        for t in self.trials:
            out.append(f"  {t.key:<{width}}  {t.needs:<34} {t.epochs:>6}  {t.train_images:>7} / {t.val_images:<7}"
                       f"  {t.variants:>8}  {t.bench:>6}  {duration(t.total_s)} (train {duration(t.train_s)}, val "
                       f"{duration(t.val_s)}, eval {duration(t.eval_s)}, overhead {duration(t.overhead_s)})")
        out.append(f"cluster: {self.cluster} -> {self.concurrency} trial{'s' if self.concurrency != 1 else ''} at a time")
        out.append("distinct configs (one benchmark each; seeds, variants, losses and assigners share one):")
        for i, (text, cost, keys) in enumerate(self.costs, 1):
            out.append(f"  {i}. {text}: {cost.source}; trials {', '.join(keys)}")
        out += [f"note: {n}" for n in self.notes]
        out.append(self.summary())
        if self.bench_s:
            out.append(f"benchmark: {self.bench_s:.1f}s")
        return out

    def record(self) -> dict[str, Any]:
        """What launch.json keeps of it."""
        return {"wall_s": round(self.wall_s, 1), "cpu_hours": round(self.cpu_hours, 4),
                "gpu_hours": round(self.gpu_hours, 4), "concurrency": self.concurrency, "source": self.source,
                "bench_s": round(self.bench_s, 1),
                "trials": {t.key: round(t.total_s, 1) for t in self.trials}}


def duration(seconds: float) -> str:
    """``42s``, ``6m10s``, ``3h05m``, ``2d04h``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def machine_resources(count_gpus: bool = True) -> dict[str, float]:
    """The CPUs and GPUs the embedded cluster would see on this machine, without starting Ray.
    ``count_gpus=False`` leaves the GPUs uncounted (0), so that a CPU profile's driver never imports torch."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = 0
    if count_gpus and os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
        import torch

        gpus = torch.cuda.device_count()
    return {"CPU": float(cpus), "GPU": float(gpus)}


def cluster_concurrency(plan: Plan, total: dict[str, float], where: str) -> tuple[int, str, list[str]]:
    """Plan.concurrency on ``total``; a cluster that cannot hold one trial is planned as one that holds one
    trial at a time, with a note saying so."""
    text = f"{where}: {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"
    try:
        return plan.concurrency(total), text, []
    except ConfigError as err:
        return 1, text, [f"{err}: planned as on a cluster that holds one trial at a time (--address of a cluster "
                         f"that can hold it plans on its resources)"]


@dataclass
class Pricing:
    """Each distinct config's trials and cost (what ``price`` measured or read), before any packing."""

    groups: list[list[str]]
    """Trial keys per distinct config, in the grid's order."""
    costs: list[Cost]
    images: dict[str, tuple[int, int]]
    """Trial key -> (train, val) images as it reads them (``data.max_images`` applied)."""
    bench_s: float


def price(plan: Plan, gpu_throughput: Optional[float] = None, table_path: Optional[Path] = None,
          at_once: Optional[int] = None, images: Optional[dict[str, tuple[int, int]]] = None) -> Pricing:
    """The cost of each distinct config of ``plan``: a GPU profile is measured on this machine's GPU
    where it has one (unless a table or a figure is given), else costed from the throughput table; a CPU profile
    is measured here, in as many copies at once as trials fit on this machine (``at_once`` caps it: the
    cluster's concurrency)."""
    res = plan.resources
    groups = distinct_configs(plan, res)
    firsts = [plan.configs[keys[0]] for keys in groups.values()]
    images = split_images(plan) if images is None else images  # first: it may write a missing synthetic set
    t0 = time.perf_counter()
    given = gpu_throughput is not None or table_path is not None
    if res.gpus_per_worker and (given or not machine_resources()["GPU"]):
        path = table_path or THROUGHPUT_TABLE
        table = load_table(path)
        costs = [table_cost(cfg, res, table, path, gpu_throughput) for cfg in firsts]
        return Pricing(list(groups.values()), costs, images, 0.0)
    copies = 1
    if not res.gpus_per_worker:  # one GPU is one trial's: copies would share what trials never share
        copies = min(cluster_concurrency(plan, machine_resources(count_gpus=False), "")[0], at_once or len(plan.configs))
    costs = measure([benchmark_config(cfg, res) for cfg in firsts], gpu=res.gpus_per_worker > 0, copies=copies)
    return Pricing(list(groups.values()), costs, images, time.perf_counter() - t0)


def estimate_study(plan: Plan, pricing: Pricing, concurrency: int, cluster: str,
                   notes: Optional[list[str]] = None) -> StudyEstimate:
    """Every trial of ``plan`` costed (``pricing``) and packed onto ``concurrency`` slots."""
    res = plan.resources
    needs = (f"{res.workers} worker{'s' if res.workers > 1 else ''} x {res.cpus_per_worker:g} CPU"
             + (f" + {res.gpus_per_worker:g} GPU" if res.gpus_per_worker else "") + f", executor {executor_of(res)}")
    trials = []
    for i, (group, cost) in enumerate(zip(pricing.groups, pricing.costs), 1):
        for key in group:
            cfg = plan.configs[key]
            n_train, n_val = pricing.images[key]
            trials.append(TrialEstimate(key, needs, cfg.train.epochs, n_train, n_val, len(cfg.variants()), i,
                                        *trial_seconds(cfg, res, cost, n_train, n_val)))
    order = {key: i for i, key in enumerate(plan.configs)}  # the grid's order: Tune starts the trials in it
    trials.sort(key=lambda t: order[t.key])
    costs = [(describe(plan.configs[keys[0]], res), c, keys) for c, keys in zip(pricing.costs, pricing.groups)]
    est = StudyEstimate(plan.study.study, plan.launch.profile, trials, costs, res, concurrency, cluster,
                        bench_s=pricing.bench_s, notes=list(notes or []))
    est.wall_s = STUDY_OVERHEAD_S + pack([t.total_s for t in trials], concurrency)
    return est


def split_images(plan: Plan) -> dict[str, tuple[int, int]]:
    """Trial key -> (train, val) images as it reads them (``data.max_images`` applied), each split opened once."""
    counts: dict[tuple, int] = {}

    def count(cfg: Config, split: str) -> int:
        key = (cfg.data.kind, cfg.data.root, split, cfg.data.max_images)
        if key not in counts:
            counts[key] = len(build_split(cfg.data, split))
        return counts[key]

    return {key: (count(cfg, cfg.data.train_split), count(cfg, cfg.data.val_split)) for key, cfg in plan.configs.items()}


def benchmark_share(plan: Plan, images: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(steps the benchmark trains, steps the study trains): a warm-up and MAX_STEPS per distinct config."""
    res = plan.resources
    distinct = len(distinct_configs(plan, res))
    study = sum(cfg.train.epochs * steps_per_epoch(cfg, res, images[key][0]) for key, cfg in plan.configs.items())
    return distinct * (1 + MAX_STEPS), study


# ---- the commands -------------------------------------------------------------------------------------------------

def plan_command(launch: Launch, address: Optional[str], seeds: Optional[int] = None,
                 gpu_throughput: Optional[float] = None, throughput_table: Optional[str] = None) -> int:
    """``ablab plan``: print the trials, what each needs, the concurrency and the estimate."""
    from .preflight import check_ray_address

    plan = plan_study(launch, check_data=False, seeds=seeds)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
        start_ray(address)
        import ray

        total, where = ray.cluster_resources(), f"cluster {address}"
    else:
        total, where = machine_resources(), "this machine, as the embedded cluster sees it"
    conc, cluster, notes = cluster_concurrency(plan, total, where)
    if gpu_throughput is not None and not (math.isfinite(gpu_throughput) and gpu_throughput > 0):
        raise ConfigError(f"--gpu-throughput: {gpu_throughput:g} images/s must be positive")
    table = Path(throughput_table) if throughput_table else None
    res = plan.resources
    if (gpu_throughput is not None or table is not None) and not res.gpus_per_worker:
        raise ConfigError(f"--gpu-throughput / --throughput-table: profile {launch.profile} trains on CPUs "
                          f"(resources.gpus_per_worker 0): its step is measured here")
    est = estimate_study(plan, price(plan, gpu_throughput, table, at_once=conc), conc, cluster, notes)
    print("\n".join(est.lines()))
    return 0


class RunEstimate:
    """The estimate of one ``ablab run``: its configs measured when it is made, before Ray starts, so the
    benchmark has the cores to itself; packed and printed once the cluster's concurrency is known
    (``announce``); compared with the wall from its making to the study's end (``finish``), and recorded on the
    launch run and in launch.json. A failure costs the study nothing but the estimate. None on a resume
    (``skip``): part of its trials are done."""

    def __init__(self, plan: Plan, skip: bool):
        self.plan = plan
        self.pricing: Optional[Pricing] = None
        self.estimate: Optional[StudyEstimate] = None
        if not skip:
            self.pricing = self._advice(lambda: self._price_if_cheap(plan))
        self.started = time.perf_counter()

    @staticmethod
    def _price_if_cheap(plan: Plan) -> Optional[Pricing]:
        images = split_images(plan)
        bench, study = benchmark_share(plan, images)
        if plan.resources.gpus_per_worker == 0 and bench > MAX_BENCH_SHARE * study:
            log.info(f"estimate: not measured: its benchmark ({bench} training steps) would be more than "
                     f"{MAX_BENCH_SHARE:.0%} of the study's {study}; `ablab plan` measures it anyway")
            return None
        return price(plan, images=images)

    @staticmethod
    def _advice(make):
        try:
            return make()
        except Exception as err:  # noqa: BLE001 - an estimate is advice: the study runs without it
            log.warning(f"estimate: not made ({type(err).__name__}: {' '.join(str(err).split())[:300]})")
            return None

    def announce(self, concurrency: int, cluster: str) -> None:
        if self.pricing is None:
            return
        self.estimate = self._advice(lambda: estimate_study(self.plan, self.pricing, concurrency, cluster))
        if self.estimate is None:
            return
        for line in self.estimate.lines():
            log.info(line)
        self._write_launch({"estimate": self.estimate.record()})

    def finish(self, tracking_uri: Optional[str]) -> None:
        """``tracking_uri`` None: the store is not taking writes, launch.json alone records it."""
        if self.estimate is None:
            return
        wall = time.perf_counter() - self.started
        ratio = wall / self.estimate.wall_s
        text = f"estimate {duration(self.estimate.wall_s)}, took {duration(wall)} ({ratio:.2f}x)"
        log.info(f"{text}; step costs {self.estimate.source}")
        self._write_launch({"wall_s": round(wall, 1)})
        if tracking_uri is None:
            return
        try:
            _log_on_launch_run(self.plan, tracking_uri, self.estimate, wall, text)
        except Exception as err:  # noqa: BLE001 - launch.json holds both
            log.warning(f"estimate: not logged on the launch run ({type(err).__name__}: {str(err)[:200]})")

    def _write_launch(self, values: dict[str, Any]) -> None:
        from .journal import write_atomic
        from .naming import LAUNCH_FILE

        path = self.plan.out_dir / LAUNCH_FILE
        try:  # replaced whole: resume reads this file
            write_atomic(path, json.dumps({**json.loads(path.read_text()), **values}, indent=1))
        except (OSError, ValueError) as err:
            log.warning(f"estimate: not written to {path} ({err})")


def _log_on_launch_run(plan: Plan, tracking_uri: str, est: StudyEstimate, wall: float, text: str) -> None:
    """Metrics ``estimate/wall_s``, ``estimate/cpu_hours``, ``estimate/gpu_hours``, ``wall_s``,
    ``wall_over_estimate`` and tags ``ablab.estimate`` (the comparison) and ``ablab.estimate_source``."""
    from .journal import LAUNCH, write_now
    from .naming import REGISTRY_FILE

    now = int(time.time() * 1000)
    values = {"estimate/wall_s": est.wall_s, "estimate/cpu_hours": est.cpu_hours, "estimate/gpu_hours": est.gpu_hours,
              "wall_s": wall, "wall_over_estimate": wall / est.wall_s}
    write_now(tracking_uri, plan.out_dir / REGISTRY_FILE, "log_batch", run=LAUNCH,
              metrics=[[k, float(v), now, 0] for k, v in values.items()],
              tags=[["ablab.estimate", text], ["ablab.estimate_source", est.source]])
