"""From a dataset to batches: resize to [short, long], flip, padded collate."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import resize

from ..config import DataConfig
from ..structures import Targets
from .datasets import DatasetError, DetectionSet

SIZE_DIVISOR = 128  # P7 has stride 128: padding to a multiple keeps every level's grid exact


def resize_scale(width: int, height: int, short: int, long: int) -> float:
    """The scale that fits an image into [short, long] (short side to `short` unless the long side exceeds `long`)."""
    return min(short / min(width, height), long / max(width, height))


class TrainingImages(Dataset):
    """Yields (image uint8 (3, h, w), boxes (G, 4), labels (G,), ignore (G,), image_id, scale)."""

    def __init__(self, ds: DetectionSet, short: int, long: int, flip: float = 0.0,
                 short_range: Optional[tuple[int, int]] = None):
        """short_range: draw each image's short side uniformly from [lo, hi] (multi-scale training)."""
        self.ds, self.short, self.long, self.flip, self.short_range = ds, short, long, flip, short_range

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        r = self.ds.records[i]
        try:
            # libjpeg-turbo through torchvision, and torch's antialiased resize: 1.5x (256 px) to 1.8x (1000 px)
            # PIL's time for the same pixels (bench/data.py).
            pixels = decode_image(read_file(str(r.path)), mode=ImageReadMode.RGB)
        except (OSError, RuntimeError) as err:
            raise DatasetError(f"cannot read image {r.path}: {err}") from None
        height, width = pixels.shape[1:]
        short = int(torch.randint(self.short_range[0], self.short_range[1] + 1, ())) if self.short_range else self.short
        scale = resize_scale(width, height, short, self.long)
        w, h = round(width * scale), round(height * scale)
        if (w, h) != (width, height):
            pixels = resize(pixels, [h, w], antialias=True)
        boxes = torch.from_numpy(r.boxes * scale)
        if self.flip > 0 and torch.rand(()) < self.flip:
            pixels = pixels.flip(-1)
            boxes = torch.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), dim=1)
        return pixels, boxes, torch.from_numpy(r.labels), torch.from_numpy(r.ignore), r.image_id, scale


@dataclass
class Batch:
    """images: (B, 3, H, W) float in [0, 1], zero-padded to multiples of 128; targets padded to G boxes;
    image_sizes: (B, 2) each image's (height, width) in pixels before the padding (boxes are clipped to it)."""

    images: Tensor
    targets: Targets
    image_ids: list[int]
    scales: list[float]
    image_sizes: Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.images.to(device, non_blocking=True), self.targets.to(device), self.image_ids, self.scales,
                     self.image_sizes.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        """Page-locked copies (the DataLoader's pin_memory calls it), for copies to a GPU that do not block."""
        t = self.targets
        return Batch(self.images.pin_memory(), Targets(t.boxes.pin_memory(), t.labels.pin_memory(), t.ignore.pin_memory()),
                     self.image_ids, self.scales, self.image_sizes.pin_memory())


def collate(items) -> Batch:
    b = len(items)
    h = max(it[0].shape[1] for it in items)
    w = max(it[0].shape[2] for it in items)
    h, w = (math.ceil(x / SIZE_DIVISOR) * SIZE_DIVISOR for x in (h, w))
    images = torch.zeros(b, 3, h, w, dtype=torch.uint8)
    g = max(1, max(it[1].shape[0] for it in items))
    boxes = torch.zeros(b, g, 4)
    labels = torch.full((b, g), -1, dtype=torch.long)
    ignore = torch.zeros(b, g, dtype=torch.bool)
    for i, (px, bx, lb, ig, _, _) in enumerate(items):
        images[i, :, : px.shape[1], : px.shape[2]] = px
        n = bx.shape[0]
        boxes[i, :n], labels[i, :n], ignore[i, :n] = bx, lb, ig
    sizes = torch.tensor([tuple(it[0].shape[1:]) for it in items], dtype=torch.float32)
    return Batch(images.float().div_(255), Targets(boxes, labels, ignore), [it[4] for it in items],
                 [it[5] for it in items], sizes)


def make_loader(ds: DetectionSet, cfg: DataConfig, batch_size: int, train: bool, workers: int = 0,
                seed: int = 0, distributed: bool = False) -> DataLoader:
    """A loader over the (per-worker shard of the) dataset. distributed: shard with DistributedSampler."""
    images = TrainingImages(ds, cfg.short, cfg.long, cfg.flip if train else 0.0,
                            cfg.train_short_range if train else None)
    sampler: Optional[DistributedSampler] = None
    if distributed:
        sampler = DistributedSampler(images, shuffle=train, seed=seed, drop_last=False)
    gen = torch.Generator().manual_seed(seed)
    # Pinned batches let Batch.to copy to a GPU without blocking (non_blocking=True). Workers are not kept
    # across epochs: each epoch's start draws their seeds from ``gen`` (saved in checkpoints), so a resumed run
    # loads and augments as the uninterrupted one; kept workers would draw them once per loader instead.
    return DataLoader(images, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate, generator=gen, drop_last=False,
                      pin_memory=torch.cuda.is_available())
