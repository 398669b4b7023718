"""DDP on a CPU: one worker with every thread, or one worker per core (gloo), on the same global batch.

Trains the smoke model (studies/profiles/smoke.yaml) on random 128 px images with a few boxes each, the
precision `auto` picks: once as 1 process x N threads with the whole batch, once as N processes x 1 thread
(DistributedDataParallel over gloo on 127.0.0.1) with 1/N of it each; prints images/s of each and their ratio.

    python bench/ddp_cpu.py [--batch 8] [--steps 10] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from detector.config import ModelConfig
from detector.model import build_detector
from detector.precision import resolve_precision
from detector.structures import Targets

SMOKE = Path(__file__).resolve().parents[1] / "studies" / "profiles" / "smoke.yaml"


def steps_per_second(rank: int, world: int, batch: int, steps: int, port: int, out) -> None:
    torch.set_num_threads(1 if world > 1 else os.cpu_count() or 1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    model = build_detector(ModelConfig(**yaml.safe_load(SMOKE.read_text())["model"]), 4)
    precision = resolve_precision("auto", torch.device("cpu"))
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    per = batch // world
    images = torch.rand(per, 3, 128, 128)
    xy = torch.rand(per, 4, 2) * 80
    targets = Targets(torch.cat([xy, xy + 16 + torch.rand(per, 4, 2) * 30], -1), torch.randint(0, 4, (per, 4)),
                      torch.zeros(per, 4, dtype=torch.bool))
    if precision.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        with precision.autocast():
            loss = model.criterion(*net(images), targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    if rank == 0:
        out.put(batch * steps / (time.perf_counter() - t0))
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rates = {}
    for world in (1, args.workers):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = ctx.Queue()
        mp.start_processes(steps_per_second, args=(world, args.batch, args.steps, port, out), nprocs=world,
                           start_method="spawn")
        rates[world] = out.get()
    precision = resolve_precision("auto", torch.device("cpu")).name
    one, many = rates[1], rates[args.workers]
    print(f"smoke model, 128 px, global batch {args.batch}, precision {precision}, {os.cpu_count()} CPUs")
    print(f"    1 worker x {os.cpu_count()} threads:    {one:6.1f} images/s")
    print(f"    {args.workers} workers x 1 thread (gloo): {many:6.1f} images/s")
    print(f"    {'one worker per core' if many > one else 'one worker with every thread'} is faster here: "
          f"{max(one, many) / min(one, many):.2f}x")


if __name__ == "__main__":
    main()
