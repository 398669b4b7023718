"""Evaluation benchmark: the cost of an inference-variant sweep against one variant, in one run.

Trains an IoU-aware RetinaNet (ResNet-50 from scratch, the smoke profile's neck and head) briefly on the synthetic set (or loads --checkpoint), then evaluates
it on the val split with one variant (cls) and with ten (cls, none, alpha 0.3 ... 1.0), at a score
threshold low enough that every image keeps its full 100 detections, as a trained model's do. Prints each
phase's seconds (forward: network + decoding; select: scoring, top-k, NMS; assemble: the result records;
metrics: COCO / VOC and the correlations; bootstrap: the intervals), the sweep's ratio to one variant, what
an extra variant costs per image after the forward pass, and the post-processing rate of one variant
(select + assemble, images/s). Each kind of evaluation runs --repeat times, interleaved; the fastest counts.

    python bench/eval.py [--images 200] [--size 256] [--epochs 1] [--metrics coco] [--backbone resnet50] [--repeat 3] [--checkpoint model.pt]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from detector.config import deep_merge, parse_config, parse_variant
from detector.data.datasets import build_split
from detector.engine import evaluate, model_from_checkpoint, read_checkpoint, train

SMOKE = Path(__file__).resolve().parents[1] / "studies" / "profiles" / "smoke.yaml"
SWEEP = ["cls", "none"] + [f"alpha={a / 10:.1f}" for a in range(3, 11)]


def config(root: Path, args: argparse.Namespace) -> dict:
    smoke = yaml.safe_load(SMOKE.read_text())
    return deep_merge(smoke, {
        "model": {"quality": {"branch": "iou"}, "backbone": {"name": args.backbone}},
        "data": {"root": str(root), "short": args.size, "long": args.size,
                 "synthetic": {"train": 200, "val": args.images, "size": args.size}},
        "train": {"epochs": args.epochs, "steps": [], "val_every": 0, "threads": torch.get_num_threads()},
        # Every image keeps its 100 best detections, as a trained model's do (few pass 0.05 this early).
        "inference": {"score_thresh": 0.0, "metrics": args.metrics},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="val images")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1, help="training before the evaluation (without --checkpoint)")
    ap.add_argument("--metrics", nargs="+", default=["coco"])
    ap.add_argument("--backbone", default="resnet50", help="from scratch, with the smoke profile's neck and head")
    ap.add_argument("--repeat", type=int, default=3, help="evaluations of each kind, interleaved; the fastest counts")
    ap.add_argument("--checkpoint", help="a trial's model.pt (the smoke IoU-aware config) instead of training")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = config(Path(tmp) / "data", args)  # the synthetic set is written on first use
        cfg = parse_config(raw)
        if args.checkpoint:
            classes = len(build_split(cfg.data, cfg.data.val_split).classes)
            model, precision = model_from_checkpoint(cfg, read_checkpoint(args.checkpoint), classes, args.checkpoint)
        else:
            state = train(cfg, log=lambda m: None)
            model, precision = state.model, state.precision
        runs = {}
        # Interleaved repeats, the fastest of each kept: the forward pass alone moves by 10-20% between two
        # evaluations on a shared 2-core machine, as much as the sweep's whole extra cost.
        for _ in range(args.repeat):
            for variants in (SWEEP[:1], SWEEP):
                specs = [parse_variant(v).model_dump() for v in variants]
                cfg = parse_config(deep_merge(raw, {"inference": {"variants": specs}}))
                t0 = time.perf_counter()
                result = evaluate(model, cfg, precision=precision, log=lambda m: None)
                wall = time.perf_counter() - t0
                if len(variants) not in runs or wall < runs[len(variants)][0]:
                    runs[len(variants)] = (wall, result)
    print(f"{args.images} val images at {args.size} px, precision {precision.name}, metrics {' + '.join(args.metrics)}, "
          f"{torch.get_num_threads()} threads")
    for n, (wall, result) in runs.items():
        per_image = result.metrics["cls/num_detections"] / args.images
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in result.seconds.items())
        print(f"  {n:2d} variant(s): {wall:6.2f}s ({per_image:.0f} detections per image): {phases}")
    one, sweep = runs[1][0], runs[len(SWEEP)][0]
    post = runs[1][1].seconds["select"] + runs[1][1].seconds["assemble"]
    print(f"  sweep / one variant: {sweep / one:.2f}x (target <= 1.2); extra variant {(sweep - one) / (len(SWEEP) - 1):.2f}s")
    after = {n: wall - result.seconds["forward"] for n, (wall, result) in runs.items()}
    print(f"  after the forward pass: 1 variant {after[1]:.2f}s, {len(SWEEP)} variants {after[len(SWEEP)]:.2f}s: "
          f"{1000 * (after[len(SWEEP)] - after[1]) / (len(SWEEP) - 1) / args.images:.2f} ms per image per extra variant")
    print(f"  post-processing of one variant (select + assemble): {args.images / post:.0f} images/s (target >= 500)")


if __name__ == "__main__":
    main()
