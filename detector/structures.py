"""The data passed between the detector's parts, for a whole batch at once: ground truth (Targets), where
predictions live (Priors), what the head predicts there (HeadOutput) and which prior learns which box
(Assignment). No behaviour beyond moving between devices and naming states."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


@dataclass
class Targets:
    """Padded ground truth. boxes: (B, G, 4) xyxy in input pixels; labels: (B, G), -1 = padding;
    ignore: (B, G) crowd / difficult boxes, never positives, their overlapping priors never negatives."""

    boxes: Tensor
    labels: Tensor
    ignore: Tensor

    def to(self, device: torch.device) -> "Targets":
        return Targets(*(x.to(device, non_blocking=True) for x in (self.boxes, self.labels, self.ignore)))


@dataclass
class Priors:
    """Per-prior geometry for one padded input size, shared by every image of a batch; location-major on
    each level (index ``(y * W + x) * A + a``), levels P3..P7 concatenated.

    boxes: (N, 4) anchor boxes (for points: a zero-size box at the point).
    points: (N, 2) centres. strides: (N,). level: (N,) FPN level index 0..4.
    level_sizes: priors per level, for per-level top-k at inference.
    """

    boxes: Tensor
    points: Tensor
    strides: Tensor
    level: Tensor
    level_sizes: list[int]


@dataclass
class HeadOutput:
    """Dense predictions over the N priors of each image (all FPN levels concatenated).

    cls_logits: (B, N, C). box_reg: (B, N, 4), deltas (anchors) or l/t/r/b over stride (points).
    quality_logits: (B, N) or None. centerness_logits: (B, N) or None.
    """

    cls_logits: Tensor
    box_reg: Tensor
    quality_logits: Optional[Tensor] = None
    centerness_logits: Optional[Tensor] = None


@dataclass
class Assignment:
    """state: (B, N) int8, POSITIVE / NEGATIVE / IGNORE. gt_index: (B, N) long, meaningful where positive."""

    state: Tensor
    gt_index: Tensor

    @property
    def positive(self) -> Tensor:
        return self.state == POSITIVE

    @property
    def valid(self) -> Tensor:
        """Priors that enter the classification loss (positives and negatives)."""
        return self.state != IGNORE
