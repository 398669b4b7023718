"""Data-path benchmark: can the loader feed the training step? One run, two settings.

For the smoke setting (synthetic 256 px JPEGs read at 128 px, batch 8, the smoke model) and a paper-like one
(1000 px JPEGs read at 800 px, batch 2, ResNet-50-FPN with the paper's 4 x 256 heads), prints:
  - decoding + resizing one image: PIL against torchvision (decode_image + antialiased resize, what the
    loader uses), 1 thread;
  - the loader's images/s with the default workers (train.loader_workers: None, i.e. 0 on a CPU) and
    with 2 worker processes;
  - the training step's images/s (precision auto, this machine's threads), and loader / step: the loader
    must sustain >= 3x the step's rate.

    python bench/data.py [--steps 3] [--batches 20]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import resize

from detector.config import parse_config
from detector.data import build_split
from detector.data.loader import make_loader
from detector.engine import build_training, train_one_epoch

SETTINGS = {
    "smoke": {"size": 256, "short": 128, "long": 128, "batch": 8,
              "model": {"backbone": {"name": "resnet10", "pretrained": "none", "norm": "bn", "frozen_stages": 0},
                        "fpn_width": 64, "head": {"depth": 2, "width": 64, "norm": "gn"}, "anchor_scale": 2}},
    "paper-like": {"size": 1000, "short": 800, "long": 1333, "batch": 2,
                   "model": {"backbone": {"name": "resnet50", "pretrained": "none", "norm": "frozen_bn",
                                          "frozen_stages": 1}}},
}


def decode_ms(paths: list[Path], short: int) -> tuple[float, float]:
    """(PIL, torchvision) milliseconds to decode and resize one image, 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        for p in paths:
            img = Image.open(p).convert("RGB")
            scale = short / min(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
            torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        t1 = time.perf_counter()
        for p in paths:
            x = decode_image(read_file(str(p)), mode=ImageReadMode.RGB)
            scale = short / min(x.shape[1:])
            resize(x, [round(x.shape[1] * scale), round(x.shape[2] * scale)], antialias=True)
        t2 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    return (t1 - t0) * 1000 / len(paths), (t2 - t1) * 1000 / len(paths)


def loader_rate(ds, cfg, batch: int, workers: int, batches: int) -> float:
    loader = make_loader(ds, cfg.data, batch, train=True, workers=workers)
    it = iter(loader)
    next(it)  # worker start-up is paid once per run (persistent workers)
    t0, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += next(it).images.shape[0]
        except StopIteration:
            break
    return seen / (time.perf_counter() - t0)


def step_rate(cfg) -> float:
    """Images/s of the training step, from one short epoch (its first iteration excluded by a warm-up epoch)."""
    run = build_training(cfg, None, log=lambda m: None)
    train_one_epoch(run, cfg, 0, log=lambda m: None)  # warm-up
    return train_one_epoch(run, cfg, 1, log=lambda m: None)["train_seconds"] ** -1 * len(run.loader.dataset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed epoch")
    ap.add_argument("--batches", type=int, default=20, help="loader batches timed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, s in SETTINGS.items():
            images = max(s["batch"] * args.batches + s["batch"], s["batch"] * args.steps)
            cfg = parse_config({
                "model": s["model"],
                "data": {"root": str(Path(tmp) / name), "short": s["short"], "long": s["long"],
                         "synthetic": {"train": images, "val": 1, "size": s["size"]}},
                "train": {"epochs": 2, "steps": [], "batch_size": s["batch"], "warmup_iters": 0, "val_every": 0}})
            ds = build_split(cfg.data, cfg.data.train_split)
            pil, tv = decode_ms([r.path for r in ds.records[:40]], s["short"])
            default = loader_rate(ds, cfg, s["batch"], 0, args.batches)
            two = loader_rate(ds, cfg, s["batch"], 2, args.batches)
            step_cfg = parse_config({**cfg.model_dump(), "data": {**cfg.data.model_dump(), "max_images": s["batch"] * args.steps}})
            step = step_rate(step_cfg)
            print(f"{name}: {s['size']} px JPEGs read at {s['short']}, batch {s['batch']}")
            print(f"    decode + resize one image: PIL {pil:.2f} ms, torchvision {tv:.2f} ms ({pil / tv:.2f}x)")
            print(f"    loader: {default:.0f} images/s with the default workers (0 here), {two:.0f} with 2")
            print(f"    training step: {step:.1f} images/s ({torch.get_num_threads()} threads); loader / step: "
                  f"{default / step:.1f}x with the default workers (target >= 3)")


if __name__ == "__main__":
    main()
