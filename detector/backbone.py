"""ResNet / ResNeXt backbone with an FPN producing P3-P7 (P6, P7 from stride-2 convs on C5).

Weights are never downloaded: ``pretrained: imagenet`` reads torchvision's file from the local torch
hub cache, and a missing file is an error that says where it was looked for.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork, deform_conv2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from .config import ConfigError

_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    "resnext101_32x8d": torchvision.models.ResNeXt101_32X8D_Weights.IMAGENET1K_V1,
    "resnext101_64x4d": torchvision.models.ResNeXt101_64X4D_Weights.IMAGENET1K_V1,
}
# resnet10: torchvision's BasicBlock ResNet with one block per stage, the cheapest from-scratch stand-in.
_BUILDERS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet10": lambda weights=None, norm_layer=None: torchvision.models.ResNet(
        torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], norm_layer=norm_layer)}
_STAGE_CHANNELS = {name: (128, 256, 512) for name in ("resnet10", "resnet18", "resnet34")}  # others: (512, 1024, 2048)


class WeightsNotFound(FileNotFoundError):
    pass


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``name`` in the local torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_WEIGHTS[name].url)


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "gn":
        return lambda c: nn.GroupNorm(32 if c % 32 == 0 else 8, c)
    return nn.BatchNorm2d


def weights_file(name: str, pretrained: str) -> Path | None:
    """The file ``pretrained`` (``none`` | ``imagenet`` | a path) names for backbone ``name``; None for
    ``none``. WeightsNotFound, saying where it looked, if it is missing. The study driver calls it for every
    trial before Ray starts."""
    if pretrained == "none":
        return None
    path = imagenet_weights_path(name) if pretrained == "imagenet" else Path(pretrained)
    if not path.is_file():
        hint = (f"place torchvision's {os.path.basename(_WEIGHTS[name].url)} there (nothing is downloaded at run time)"
                if pretrained == "imagenet" else "give an existing file, 'imagenet' or 'none'")
        raise WeightsNotFound(f"model.backbone.pretrained: weights for {name} not found at {path}; {hint}")
    return path


def _load_state(name: str, pretrained: str) -> dict[str, Tensor] | None:
    path = weights_file(name, pretrained)
    if path is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class ModulatedDeformConv(nn.Module):
    """DCNv2 in place of a 3x3 conv (mmcv's ModulatedDeformConv2dPack): a conv on the same input predicts 2 x 9
    offsets and 9 masks per location; it starts at zero, so the block starts as the plain conv at half
    strength (mask sigmoid(0) = 0.5), as in the authors' configs. Keeps the conv's (pretrained) weight."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = conv.weight
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        taps = conv.kernel_size[0] * conv.kernel_size[1]
        self.offset_mask = nn.Conv2d(conv.in_channels, 3 * taps, conv.kernel_size, conv.stride, conv.padding,
                                     conv.dilation)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H', W'), in x's dtype."""
        o1, o2, mask = self.offset_mask(x).chunk(3, dim=1)
        # deform_conv2d has no bf16 kernel on CPU (and autocast casts it to fp32 only on CUDA): run it in fp32
        # under any autocast.
        with torch.autocast(x.device.type, enabled=False):
            out = deform_conv2d(x.float(), torch.cat((o1, o2), dim=1).float(), self.weight.float(), None,
                                self.stride, self.padding, self.dilation, mask.float().sigmoid())
        return out.to(x.dtype)


def make_deformable(stage: nn.Sequential) -> None:
    """Each block's 3x3 conv (conv2, for Basic and Bottleneck blocks; grouped for ResNeXt, which
    deform_conv2d reads off the weight's shape) becomes a DCNv2."""
    for block in stage:
        block.conv2 = ModulatedDeformConv(block.conv2)


class ConvFrozenBN(nn.Module):
    """conv followed by a frozen BN, computed as one conv with the BN scale folded into the weight:
    BN(conv(x, W)) = conv(x, W * s) + b. Same values and the same gradient w.r.t. W, without two
    elementwise passes over the activation (a third of a bf16 step on CPU)."""

    def __init__(self, conv: nn.Conv2d, bn: FrozenBatchNorm2d):
        super().__init__()
        self.conv = conv
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", (bn.bias - bn.running_mean * scale).detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        return nn.functional.conv2d(x, c.weight * self.scale.view(-1, 1, 1, 1), self.shift, c.stride, c.padding,
                                    c.dilation, c.groups)


def fold_frozen_bn(module: nn.Module) -> None:
    """Replace every (conv, FrozenBatchNorm2d) pair of torchvision's ResNet blocks by a ConvFrozenBN."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Sequential) and len(child) == 2 and isinstance(child[1], FrozenBatchNorm2d):
            setattr(module, name, ConvFrozenBN(child[0], child[1]))  # a downsample branch
            continue
        for i in (1, 2, 3):
            conv, bn = getattr(child, f"conv{i}", None), getattr(child, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                setattr(child, f"conv{i}", ConvFrozenBN(conv, bn))
                setattr(child, f"bn{i}", nn.Identity())
        fold_frozen_bn(child)


class Backbone(nn.Module):
    """ResNet C3-C5 + FPN. Input (B, 3, H, W) normalised; output list of 5 maps (B, width, H/s, W/s), s = 8..128."""

    def __init__(self, name: str, fpn_width: int, *, pretrained: str = "none", norm: str = "frozen_bn",
                 frozen_stages: int = 1, deformable_stages: tuple[int, ...] = ()):
        """name: a torchvision ResNet / ResNeXt (or resnet10); pretrained: none | imagenet | a path (see
        weights_file); norm: frozen_bn | bn | gn; frozen_stages: stem + stages 1..k get no gradient;
        deformable_stages: c3..c5 stages whose 3x3 convs become DCNv2 (after the weights are loaded)."""
        super().__init__()
        build = _BUILDERS.get(name) or getattr(torchvision.models, name)
        resnet = build(weights=None, norm_layer=_norm_layer(norm))
        state = _load_state(name, pretrained)
        if state is not None:
            missing, unexpected = resnet.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.startswith("fc.")]
            if bad:
                raise ConfigError(f"model.backbone.pretrained: {pretrained} lacks {len(bad)} {name} weights, "
                                  f"e.g. {bad[:3]}")
        for c in deformable_stages:
            make_deformable(getattr(resnet, f"layer{c - 1}"))
        if norm == "frozen_bn":
            resnet.conv1, resnet.bn1 = ConvFrozenBN(resnet.conv1, resnet.bn1), nn.Identity()
            fold_frozen_bn(resnet)
        self.body = nn.ModuleDict(OrderedDict(
            stem=nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool),
            layer1=resnet.layer1, layer2=resnet.layer2, layer3=resnet.layer3, layer4=resnet.layer4))
        for i, stage in enumerate(["stem", "layer1", "layer2", "layer3", "layer4"]):
            if i <= frozen_stages and frozen_stages > 0:
                self.body[stage].requires_grad_(False)
        c3, c4, c5 = _STAGE_CHANNELS.get(name, (512, 1024, 2048))
        self.fpn = FeaturePyramidNetwork([c3, c4, c5], fpn_width, extra_blocks=LastLevelP6P7(c5, fpn_width))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.body["stem"](x)
        c2 = self.body["layer1"](x)
        c3 = self.body["layer2"](c2)
        c4 = self.body["layer3"](c3)
        c5 = self.body["layer4"](c4)
        return list(self.fpn(OrderedDict(c3=c3, c4=c4, c5=c5)).values())
