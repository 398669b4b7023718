"""The single-stage detector: backbone + FPN + dense head on one family's priors, paired with its loss.
``build_detector`` is the one place where the config becomes plain arguments."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .assigners import point_rule
from .backbone import Backbone
from .config import ModelConfig
from .criterion import Criterion
from .families import AnchorFamily, DetectorFamily, PointFamily
from .head import DenseHead
from .structures import HeadOutput, Priors

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class Detector(nn.Module):
    """images (B, 3, H, W) in [0, 1], H and W multiples of 128 (the loader pads so) -> dense predictions
    (:class:`HeadOutput`) and the priors they sit on. ``criterion(out, priors, targets)`` is its loss (a
    separate object, as DETR's pair: under DDP the wrapped module runs the forward only)."""

    def __init__(self, backbone: Backbone, head: DenseHead, family: DetectorFamily, criterion: Criterion):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.family = family
        self.criterion = criterion
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self._priors: dict[tuple, Priors] = {}

    def priors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> Priors:
        key = (tuple(feature_sizes), str(device))
        if key not in self._priors:
            self._priors[key] = self.family.priors(feature_sizes, device)
        return self._priors[key]

    def forward(self, images: Tensor) -> tuple[HeadOutput, Priors]:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        features = self.backbone(x)
        out = self.head(features)
        return out, self.priors([tuple(f.shape[-2:]) for f in features], images.device)


def build_family(cfg: ModelConfig) -> DetectorFamily:
    a = cfg.assigner
    ignore_near_crowd = a.near_crowd == "ignore"
    if cfg.arch == "retinanet":
        return AnchorFamily(cfg.anchor_scale, a.pos_iou, a.neg_iou, ignore_near_crowd)
    return PointFamily(point_rule(a.name, threshold=a.threshold, scale=a.scale), ignore_near_crowd)


def build_detector(cfg: ModelConfig, num_classes: int) -> Detector:
    """The detector ``cfg`` describes, for ``num_classes`` classes."""
    family = build_family(cfg)
    b, h, q = cfg.backbone, cfg.head, cfg.quality
    backbone = Backbone(b.name, cfg.fpn_width, pretrained=b.pretrained, norm=b.norm, frozen_stages=b.frozen_stages,
                        deformable_stages=tuple(b.deformable_stages))
    quality_on = None if q.branch == "none" else q.branch
    head = DenseHead(cfg.fpn_width, num_classes, family.priors_per_location, depth=h.depth, width=h.width,
                     norm=h.norm, quality_on=quality_on, centerness=cfg.centerness,
                     level_scales=family.learns_level_scales)
    criterion = Criterion(family, box_loss=cfg.box_loss, box_loss_weight=cfg.box_loss_weight,
                          smooth_l1_beta=cfg.smooth_l1_beta, quality_loss=q.loss if quality_on else None,
                          quality_weight=q.weight, detach_quality=q.detach, quality_neg_weight=q.neg_weight,
                          quality_beta=q.beta, centerness=cfg.centerness, focal_alpha=cfg.focal.alpha,
                          focal_gamma=cfg.focal.gamma)
    return Detector(backbone, head, family, criterion)
