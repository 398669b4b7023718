"""The single-stage detector: backbone + FPN + dense head, anchor-based (RetinaNet) or anchor-free."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .config import ModelConfig
from .criterion import Criterion, HeadOutput, Targets
from .head import DenseHead
from .priors import NUM_ANCHORS, Priors, make_priors

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class Detector(nn.Module):
    """images (B, 3, H, W) in [0, 1], H and W multiples of 128 (the loader pads so) -> dense predictions."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.anchors_per_location = NUM_ANCHORS if cfg.arch == "retinanet" else 1
        self.backbone = Backbone(cfg.backbone, cfg.fpn_width)
        self.head = DenseHead(cfg, num_classes, self.anchors_per_location)
        self.criterion = Criterion(cfg)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self._priors: dict[tuple, Priors] = {}

    def priors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> Priors:
        key = (tuple(feature_sizes), str(device))
        if key not in self._priors:
            self._priors[key] = make_priors(feature_sizes, self.anchors_per_location, device, self.cfg.anchor_scale)
        return self._priors[key]

    def forward(self, images: Tensor) -> tuple[HeadOutput, Priors]:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        features = self.backbone(x)
        out = self.head(features)
        return out, self.priors([tuple(f.shape[-2:]) for f in features], images.device)

    def loss(self, images: Tensor, targets: Targets) -> dict[str, Tensor]:
        out, priors = self(images)
        return self.criterion(out, priors, targets)
