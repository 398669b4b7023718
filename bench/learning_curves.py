"""Learning curves of the smoke detector on the synthetic set: VOC AP50 and AP90 (and mAP over 0.50:0.95)
against training images seen, per seed, and their spread over seeds at each point.

This is how the smoke data's difficulty was calibrated (issue: the main job answers the paper's question): the
baseline (RetinaNet, cls scores) should land near the papers' baseline operating point, VOC AP50 75-90 and
AP90 10-30, on the main job's budget. Seeds train two at a time, one thread each, as the main job's trials do.

    python bench/learning_curves.py [--seeds 3] [--epochs 4] [--steps 3] [--train 400] [--val 500] [--size 256]
                                    [--backbone resnet10] [--quality none|iou|iou_grad] [--batch 4] [--warmup 100]
                                    [--edge-blur 2] [--occlusion 0] [--truncation 0.5] [--precision auto|fp32]
                                    [--data DIR] [--parallel 2]

The README's learning curve: ``--seeds 3 --epochs 5 --steps 4 --val 500`` (the generator's and the smoke
profile's defaults for the rest).

Prints one line per (seed, epoch), then per epoch the mean and SD over seeds, and the wall per trial.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
METRICS = ("mAP", "mAP50", "mAP70", "mAP90")


def config(args, seed: int) -> dict:
    from detector.config import deep_merge

    smoke = yaml.safe_load((REPO / "studies" / "profiles" / "smoke.yaml").read_text())
    quality = {"none": {"branch": "none"}, "iou": {"branch": "iou", "detach": True, "loss": "bce"},
               "iou_grad": {"branch": "iou", "detach": False, "loss": "bce"}}[args.quality]
    return deep_merge(smoke, {
        "model": {"backbone": {"name": args.backbone}, "quality": quality},
        "data": {"root": str(args.data), "synthetic": {"train": args.train, "val": args.val, "size": args.size,
                                                       "edge_blur": args.edge_blur, "occlusion": args.occlusion,
                                                       "truncation": args.truncation}},
        "train": {"epochs": args.epochs, "steps": args.steps, "seed": seed, "precision": args.precision,
                  "threads": 1, "val_every": 0, **({"warmup_iters": args.warmup} if args.warmup is not None else {}),
                  **({"batch_size": args.batch} if args.batch is not None else {})},
        "inference": {"metrics": ["voc"], "variants": [{"name": "cls", "combine": "cls"}] + (
            [{"name": "alpha=0.5", "combine": "power", "alpha": 0.5}] if args.quality != "none" else [])},
    })


def one_seed(args, seed: int) -> tuple[int, list[dict], float]:
    """Train one seed, evaluating every variant on the whole val split after each epoch."""
    import torch

    from detector.config import parse_config
    from detector.engine import evaluate, train

    torch.set_num_threads(1)
    cfg = parse_config(config(args, seed))
    points = []

    def at_epoch_end(state, _metrics):
        m = evaluate(state.model, cfg, precision=state.precision, log=lambda _: None, intervals=False).metrics
        points.append({"epoch": state.epoch, **{k: v for k, v in m.items() if k.rpartition("/")[2] in METRICS}})

    t0 = time.perf_counter()
    train(cfg, on_epoch_end=at_epoch_end, log=lambda _: None)
    return seed, points, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--steps", type=int, nargs="*", default=None, help="lr steps (epochs); default: the last epoch")
    ap.add_argument("--warmup", type=int, default=None, help="warmup iterations; default: the smoke profile's")
    ap.add_argument("--batch", type=int, default=None, help="images per step; default: the smoke profile's")

    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--backbone", default="resnet10")
    ap.add_argument("--quality", choices=["none", "iou", "iou_grad"], default="none")
    ap.add_argument("--edge-blur", type=float, default=None, help="default: the generator's")
    ap.add_argument("--occlusion", type=float, default=None, help="default: the generator's")
    ap.add_argument("--truncation", type=float, default=None, help="default: the generator's")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--data", type=Path, default=None, help="the synthetic set's folder (default: one per setting "
                                                             "under /tmp/ablab-curves)")
    ap.add_argument("--parallel", type=int, default=2)
    args = ap.parse_args()

    from detector.config import SyntheticConfig, parse_config
    from detector.data import build_split

    defaults = SyntheticConfig()
    args.steps = [args.epochs - 1] if args.steps is None and args.epochs > 2 else args.steps or []
    args.edge_blur = defaults.edge_blur if args.edge_blur is None else args.edge_blur
    args.occlusion = defaults.occlusion if args.occlusion is None else args.occlusion
    args.truncation = defaults.truncation if args.truncation is None else args.truncation
    if args.data is None:
        args.data = Path("/tmp/ablab-curves") / (f"g{defaults.generator}-n{args.train}-v{args.val}-s{args.size}-"
                                                f"b{args.edge_blur:g}-o{args.occlusion:g}-t{args.truncation:g}")
    cfg = parse_config(config(args, 0))
    build_split(cfg.data, "train")  # written once, before the workers start
    print(f"{args.backbone} quality={args.quality}, {args.train} train x {args.epochs} epochs, {args.val} val, "
          f"edge_blur {args.edge_blur:g}, occlusion {args.occlusion:g}, truncation {args.truncation:g}, "
          f"precision {args.precision}", flush=True)

    with mp.get_context("spawn").Pool(args.parallel) as pool:
        runs = pool.starmap(one_seed, [(args, s) for s in range(args.seeds)])
    variants = sorted({k.rpartition("/")[0] for _, pts, _ in runs for k in pts[0] if "/" in k})
    for seed, points, wall in runs:
        for p in points:
            print(f"seed {seed} epoch {p['epoch']} ({p['epoch'] * args.train} images): " + "  ".join(
                f"{v}: " + " ".join(f"{m.removeprefix('m')} {100 * p[f'{v}/{m}']:.1f}" for m in METRICS)
                for v in variants), flush=True)
        print(f"seed {seed}: {wall:.0f} s", flush=True)
    print("mean (SD over seeds):")
    for e in range(args.epochs):
        cells = []
        for v in variants:
            for m in METRICS:
                x = 100 * np.array([pts[e][f"{v}/{m}"] for _, pts, _ in runs])
                cells.append(f"{v}/{m.removeprefix('m')} {x.mean():.1f} ({x.std(ddof=1) if len(x) > 1 else 0:.1f})")
        print(f"  epoch {e + 1} ({(e + 1) * args.train} images): " + "  ".join(cells))
    print(f"wall per trial: {np.mean([w for *_, w in runs]):.0f} s (with an evaluation after every epoch)")


if __name__ == "__main__":
    sys.exit(main())
