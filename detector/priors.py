"""Where predictions live: RetinaNet's anchors and the anchor-free detector's points, per FPN level, as
:class:`~detector.structures.Priors` (location-major, matching the head's flattening (H, W, A))."""
from __future__ import annotations

import torch
from torch import Tensor

from .structures import Priors

STRIDES = (8, 16, 32, 64, 128)
# FCOS regress ranges: the largest l/t/r/b distance a level is responsible for.
REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, float("inf")))

ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_SCALES = tuple(2 ** (i / 3) for i in range(3))
NUM_ANCHORS = len(ANCHOR_RATIOS) * len(ANCHOR_SCALES)


def _grid_centres(h: int, w: int, stride: int, device: torch.device) -> Tensor:
    """(h*w, 2) pixel centres of a level's cells, row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1)


def _cell_anchors(stride: int, octave_base: float, device: torch.device) -> Tensor:
    """(A, 4) anchors centred at the origin: side octave_base x stride, 3 scales x 3 ratios (ratio-major)."""
    base = octave_base * stride
    ratios = torch.tensor(ANCHOR_RATIOS, device=device)
    scales = torch.tensor(ANCHOR_SCALES, device=device)
    h_ratio = ratios.sqrt()
    w = (base / h_ratio[:, None] * scales[None, :]).reshape(-1)
    h = (base * h_ratio[:, None] * scales[None, :]).reshape(-1)
    return torch.stack((-w / 2, -h / 2, w / 2, h / 2), dim=-1)


def make_priors(feature_sizes: list[tuple[int, int]], anchors_per_location: int, device: torch.device,
                octave_base: float = 4.0) -> Priors:
    """Priors for feature maps of the given (H, W) per level. anchors_per_location: 9 or 1 (points)."""
    boxes, points, strides, levels, sizes = [], [], [], [], []
    for lvl, ((h, w), stride) in enumerate(zip(feature_sizes, STRIDES)):
        centres = _grid_centres(h, w, stride, device)
        if anchors_per_location == 1:
            pts = centres
            bx = torch.cat((centres, centres), dim=-1)
        else:
            cell = _cell_anchors(stride, octave_base, device)
            bx = (torch.cat((centres, centres), dim=-1)[:, None, :] + cell[None]).reshape(-1, 4)
            pts = centres.repeat_interleave(anchors_per_location, dim=0)
        n = bx.shape[0]
        boxes.append(bx)
        points.append(pts)
        strides.append(torch.full((n,), float(stride), device=device))
        levels.append(torch.full((n,), lvl, device=device, dtype=torch.long))
        sizes.append(n)
    return Priors(torch.cat(boxes), torch.cat(points), torch.cat(strides), torch.cat(levels), sizes)
