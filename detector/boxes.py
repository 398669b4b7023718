"""Box arithmetic shared by both detector families. Boxes are (x1, y1, x2, y2) in pixels."""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Clamp on predicted log-size deltas (as torchvision/detectron) so exp() cannot overflow early in training.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def _paired_inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter, area_a + area_b - inter


def paired_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of corresponding boxes. a, b: (..., 4) -> (...)."""
    inter, union = _paired_inter_union(a, b)
    return inter / (union + eps)


def clip_to_images(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Boxes (B, N, 4) xyxy clipped to each image's (height, width) (B, 2) (torchvision's clip_boxes_to_image,
    for a batch of images of different sizes)."""
    h, w = image_sizes.to(boxes).unbind(-1)
    return torch.minimum(boxes.clamp(min=0), torch.stack((w, h, w, h), dim=-1)[:, None, :])


def batched_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs IoU per image. a: (B, N, 4), b: (B, M, 4) -> (B, N, M)."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter).clamp(min=1e-7)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(cx, cy, w, h) of boxes (..., 4)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class DeltaCoder:
    """RetinaNet's (dx, dy, dw, dh) encoding of a box relative to its anchor, unit weights."""

    @staticmethod
    def encode(anchors: Tensor, boxes: Tensor) -> Tensor:
        """anchors, boxes: (..., 4) -> deltas (..., 4)."""
        ax, ay, aw, ah = _centre_size(anchors)
        bx, by, bw, bh = _centre_size(boxes)
        bw, bh = bw.clamp(min=1e-3), bh.clamp(min=1e-3)
        return torch.stack(((bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)), dim=-1)

    @staticmethod
    def decode(anchors: Tensor, deltas: Tensor) -> Tensor:
        """anchors: (..., 4) broadcastable to deltas (..., 4) -> boxes (..., 4)."""
        ax, ay, aw, ah = _centre_size(anchors)
        cx = ax + deltas[..., 0] * aw
        cy = ay + deltas[..., 1] * ah
        w = aw * torch.exp(deltas[..., 2].clamp(max=_MAX_LOG_SCALE))
        h = ah * torch.exp(deltas[..., 3].clamp(max=_MAX_LOG_SCALE))
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def point_box_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """(l, t, r, b) from each point to its box's sides, positive inside. points (..., 2) and boxes (..., 4)
    broadcast: e.g. (1, N, 1, 2) with (B, 1, G, 4) gives every point against every box, (B, N, G, 4)."""
    return torch.cat(torch.broadcast_tensors(points - boxes[..., :2], boxes[..., 2:] - points), dim=-1)


class DistanceCoder:
    """Anchor-free (l, t, r, b) distances from a point to the box sides, in units of the level stride."""

    @staticmethod
    def encode(points: Tensor, strides: Tensor, boxes: Tensor) -> Tensor:
        """points: (..., 2), strides: (...), boxes: (..., 4) -> (..., 4) distances / stride."""
        return point_box_distances(points, boxes) / strides[..., None]

    @staticmethod
    def decode(points: Tensor, strides: Tensor, dists: Tensor) -> Tensor:
        """points: (..., 2), strides: (...), dists: (..., 4) in stride units -> boxes (..., 4)."""
        d = dists * strides[..., None]
        return torch.cat((points - d[..., :2], points + d[..., 2:]), dim=-1)
