"""Training-step benchmark: our RetinaNet vs torchvision's retinanet_resnet50_fpn, same inputs, one run.

Prints, measured here and now:
  (a) training images/s, ours / torchvision (fp32, same batch, input size, classes, boxes);
  (b) the share of a step spent in anchor generation + assignment + losses, ours and torchvision's;
  (c) our step's achieved GFLOP/s (FLOPs from torch.utils.flop_counter) over this machine's conv GFLOP/s;
  (d) ours with precision bf16 (CPU autocast + channels_last; AMP on GPU) / torchvision fp32, and which
      precision `auto` picks on this machine: on a CPU without native bf16 (no avx512_bf16 / amx_bf16) bf16
      is emulated, (d) falls below 1, and auto picks fp32 (ABLAB_NATIVE_BF16=0 shows that choice anywhere);
  (e) with --compile: ours under torch.compile (train.compile: true) / ours eager, in the precision auto
      picks, and the compilation's seconds.
--device cuda runs the same on a GPU (default: CUDA when present).

    python bench/train_step.py [--size 512] [--batch 2] [--steps 4] [--classes 80] [--boxes 8] [--device cpu|cuda]
                               [--compile]
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.config import ModelConfig
from detector.structures import Targets
from detector.engine import select_device
from detector.model import Detector, build_detector
from detector.precision import Precision, hardware_summary, resolve_precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(batch: int, size: int, classes: int, boxes: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    xy = torch.rand(batch, boxes, 2, generator=g) * size * 0.7
    wh = 16 + torch.rand(batch, boxes, 2, generator=g) * size * 0.3
    bx = torch.cat((xy, (xy + wh).clamp(max=size - 1)), -1)
    labels = torch.randint(0, classes, (batch, boxes), generator=g)
    return images.to(device), bx.to(device), labels.to(device)


def torchvision_model(classes: int, size: int) -> RetinaNet:
    """torchvision's retinanet_resnet50_fpn, with frozen BN + frozen stem/stage 1 as ours, no resizing."""
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(2048, 256))
    model = RetinaNet(backbone, classes)
    model.transform = GeneralizedRCNNTransform(size, size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return model


def our_model(classes: int) -> Detector:
    cfg = ModelConfig(backbone={"name": "resnet50", "pretrained": "none", "norm": "frozen_bn", "frozen_stages": 1})
    return build_detector(cfg, classes)


class Timer:
    def __init__(self, device):
        self.device, self.total = device, 0.0

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        sync(self.device)
        self.total += time.perf_counter() - self.t0


def ours_step(model: Detector, opt, images, targets: Targets, precision: Precision, loss_timer: Timer):
    if precision.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        out, priors = model(images)
        with loss_timer:
            losses = model.criterion(out, priors, targets)
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    opt.step()


def tv_step(model: RetinaNet, opt, images, tv_targets, loss_timer: Timer):
    imgs, tgts = model.transform(list(images), tv_targets)
    feats = list(model.backbone(imgs.tensors).values())
    head = model.head(feats)
    with loss_timer:
        anchors = model.anchor_generator(imgs, feats)
        losses = model.compute_loss(tgts, head, anchors)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()


def run(step, steps: int, warmup: int, device) -> tuple[float, float]:
    """(seconds per step, seconds per step inside the loss timer)."""
    for _ in range(warmup):
        step()
    t = Timer(device)
    loss_t = step.loss_timer
    loss_t.total = 0.0
    with t:
        for _ in range(steps):
            step()
    return t.total / steps, loss_t.total / steps


class Step:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args
        self.loss_timer = args[-1] if isinstance(args[-1], Timer) else None

    def __call__(self):
        self.fn(*self.args)


def conv_peak_gflops(device, size: int, precision: str = "fp32") -> float:
    """GFLOP/s of a large 3x3 conv forward+backward on this machine (the physical limit we compare to)."""
    x = torch.randn(2, 256, size // 8, size // 8, device=device, requires_grad=True)
    conv = nn.Conv2d(256, 256, 3, padding=1).to(device)
    def once():
        conv(x).sum().backward()
    with FlopCounterMode(display=False) as fc:
        once()
    flops = fc.get_total_flops()
    for _ in range(2):
        once()
    sync(device)
    t0, n = time.perf_counter(), 10
    for _ in range(n):
        once()
    sync(device)
    return flops * n / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--boxes", type=int, default=8)
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when present")
    ap.add_argument("--compile", action="store_true", help="also (e): torch.compile against eager")
    args = ap.parse_args()
    device = torch.device(args.device) if args.device else select_device()
    torch.manual_seed(0)
    images, boxes, labels = make_inputs(args.batch, args.size, args.classes, args.boxes, device)
    targets = Targets(boxes, labels, torch.zeros_like(labels, dtype=torch.bool))
    tv_targets = [{"boxes": b, "labels": l} for b, l in zip(boxes, labels)]
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch} x {args.size}x{args.size}, {args.classes} classes, {args.boxes} boxes/image")
    fp32, bf16 = Precision("fp32", device.type), Precision("bf16", device.type)
    auto = resolve_precision("auto", device)
    print(f"hardware: {hardware_summary(device)}; precision auto picks {auto.name} here")

    ours = our_model(args.classes).to(device)
    tv = torchvision_model(args.classes, args.size).to(device)
    sgd = lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    ours_opt, tv_opt = sgd(ours), sgd(tv)

    with FlopCounterMode(display=False) as fc:
        ours_step(ours, ours_opt, images, targets, fp32, Timer(device))
    flops = fc.get_total_flops()

    tv_s, tv_loss = run(Step(tv_step, tv, tv_opt, images, tv_targets, Timer(device)), args.steps, args.warmup, device)
    ours_s, ours_loss = run(Step(ours_step, ours, ours_opt, images, targets, fp32, Timer(device)), args.steps, args.warmup, device)
    ours_bf = our_model(args.classes).to(device).to(memory_format=torch.channels_last)
    bf_opt = sgd(ours_bf)
    bf_s, _ = run(Step(ours_step, ours_bf, bf_opt, images, targets, bf16, Timer(device)), args.steps, args.warmup, device)
    peak = conv_peak_gflops(device, args.size)

    ips = lambda s: args.batch / s
    print(f"torchvision retinanet_resnet50_fpn fp32: {ips(tv_s):.3f} img/s ({tv_s:.3f} s/step)")
    print(f"ours RetinaNet-R50 fp32:                 {ips(ours_s):.3f} img/s ({ours_s:.3f} s/step)")
    print(f"ours RetinaNet-R50 bf16+channels_last:   {ips(bf_s):.3f} img/s ({bf_s:.3f} s/step)")
    print(f"(a) speed ratio ours/torchvision (fp32):        {tv_s / ours_s:.3f}")
    print(f"(b) anchors+assignment+losses share of a step:  ours {ours_loss / ours_s:.2%}, torchvision {tv_loss / tv_s:.2%}")
    achieved = flops / ours_s / 1e9
    print(f"(c) ours {flops / 1e9:.0f} GFLOP/step, {achieved:.0f} GFLOP/s achieved / {peak:.0f} GFLOP/s conv peak = {achieved / peak:.3f}")
    print(f"(d) speed ratio ours bf16 / torchvision fp32:   {tv_s / bf_s:.3f}")
    print(f"    ours bf16 / ours fp32: {ours_s / bf_s:.3f}; auto picks {auto.name}, "
          f"{'so (d) is what a study gets here' if auto.name == 'bf16' else 'so a study gets (a) here'}")
    if tv_s / bf_s < 1:
        print("    (d) < 1: bf16 is emulated on this hardware (no native bf16), which is why auto does not pick it")
    if args.compile:
        eager_s = bf_s if auto.name == "bf16" else ours_s
        compiled = our_model(args.classes).to(device)
        if auto.channels_last:
            compiled = compiled.to(memory_format=torch.channels_last)
        opt = sgd(compiled)
        net = torch.compile(compiled)
        step = Step(ours_step, net, opt, images, targets, auto, Timer(device))
        t0 = time.perf_counter()
        step()  # compiles
        compile_s = time.perf_counter() - t0
        comp_s, _ = run(step, args.steps, args.warmup, device)
        print(f"(e) torch.compile / eager ({auto.name}): {eager_s / comp_s:.3f} ({ips(comp_s):.3f} img/s against "
              f"{ips(eager_s):.3f}); compiling took {compile_s:.0f} s")


if __name__ == "__main__":
    main()
