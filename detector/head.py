"""The dense prediction head shared by every FPN level: classification and regression towers, their
output convs, and the optional quality (IoU / object-confidence) and centerness branches."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .structures import HeadOutput


def _tower(depth: int, in_ch: int, width: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        conv = nn.Conv2d(in_ch if i == 0 else width, width, 3, padding=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        if norm == "gn":
            layers.append(nn.GroupNorm(32 if width % 32 == 0 else 8, width))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _output_conv(in_ch: int, out_ch: int, bias: float = 0.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias)
    return conv


def _flatten(x: Tensor, k: int) -> Tensor:
    """(B, A*K, H, W) -> (B, H*W*A, K), location-major as the priors."""
    b, _, h, w = x.shape
    return x.view(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)


class Scale(nn.Module):
    """A learnable scalar per FPN level for the anchor-free box output (FCOS)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class DenseHead(nn.Module):
    """Per level: cls tower -> (A*C) logits; reg tower -> (A*4) box outputs; quality conv (A) on the reg tower
    (``quality_on="iou"``) or the cls tower (``"conf"``); centerness conv (A) on the reg tower; with
    ``level_scales`` a learnable scale per level and a ReLU on the box output (distances, FCOS).
    Input: FPN maps (B, in_channels, H_l, W_l); output: a :class:`HeadOutput` over all levels."""

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int, *, depth: int = 4, width: int = 256,
                 norm: str = "none", quality_on: Optional[str] = None, centerness: bool = False,
                 level_scales: bool = False, num_levels: int = 5):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        out_width = width if depth > 0 else in_channels
        self.cls_tower = _tower(depth, in_channels, width, norm)
        self.reg_tower = _tower(depth, in_channels, width, norm)
        prior_prob = 0.01
        self.cls_out = _output_conv(out_width, num_anchors * num_classes, -math.log((1 - prior_prob) / prior_prob))
        self.box_out = _output_conv(out_width, num_anchors * 4)
        self.quality_on = quality_on
        self.quality_out = _output_conv(out_width, num_anchors) if quality_on else None
        self.centerness_out = _output_conv(out_width, num_anchors) if centerness else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels)) if level_scales else None

    def forward(self, features: list[Tensor]) -> HeadOutput:
        cls, box, quality, ctr = [], [], [], []
        for lvl, f in enumerate(features):
            c = self.cls_tower(f)
            r = self.reg_tower(f)
            cls.append(_flatten(self.cls_out(c), self.num_classes))
            b = self.box_out(r)
            if self.scales is not None:
                b = torch.relu(self.scales[lvl](b))
            box.append(_flatten(b, 4))
            if self.quality_out is not None:
                quality.append(_flatten(self.quality_out(r if self.quality_on == "iou" else c), 1))
            if self.centerness_out is not None:
                ctr.append(_flatten(self.centerness_out(r), 1))
        return HeadOutput(
            cls_logits=torch.cat(cls, 1),
            box_reg=torch.cat(box, 1),
            quality_logits=torch.cat(quality, 1).squeeze(-1) if quality else None,
            centerness_logits=torch.cat(ctr, 1).squeeze(-1) if ctr else None,
        )
