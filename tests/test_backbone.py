import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.backbone import Backbone, WeightsNotFound, fold_frozen_bn
from detector.config import BackboneConfig


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_folding_frozen_bn_keeps_outputs_and_weight_gradients(name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
    for m in ref.modules():  # non-trivial frozen statistics
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5); m.bias.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.5, 2.0)
    folded = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
    folded.load_state_dict(ref.state_dict())
    fold_frozen_bn(folded)
    assert not any(isinstance(m, FrozenBatchNorm2d) for n, m in folded.named_modules() if n.startswith("layer"))
    # float64, so that 50 layers of float32 rounding do not hide a real difference
    ref.double()
    folded.double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    a, b = ref(x), folded(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    a.sum().backward()
    b.sum().backward()
    ga = ref.layer2[0].conv1.weight.grad
    gb = folded.layer2[0].conv1.conv.weight.grad
    assert ((ga - gb).norm() / ga.norm()).item() < 1e-5


def test_missing_imagenet_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFound, match=r"resnet18 not found at .*checkpoints.*nothing is downloaded"):
        Backbone("resnet18", 32, pretrained="imagenet")
    with pytest.raises(WeightsNotFound, match="no_such.pth"):
        Backbone("resnet18", 32, pretrained=str(tmp_path / "no_such.pth"))


def test_weights_from_a_file_are_loaded(tmp_path):
    torch.manual_seed(1)
    src = torchvision.models.resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    bb = Backbone("resnet18", 32, pretrained=str(tmp_path / "r18.pth"), norm="bn")
    assert torch.equal(bb.body["layer3"][0].conv1.weight, src.layer3[0].conv1.weight)


def test_frozen_stages_freeze_stem_and_stage_one():
    bb = Backbone("resnet18", 32, pretrained="none", frozen_stages=1)
    assert not any(p.requires_grad for p in bb.body["stem"].parameters())
    assert not any(p.requires_grad for p in bb.body["layer1"].parameters())
    assert all(p.requires_grad for p in bb.body["layer2"].parameters())


def test_resnet10_is_one_basic_block_per_stage_and_has_no_imagenet_weights():
    bb = Backbone("resnet10", 32, pretrained="none", norm="bn", frozen_stages=0)
    assert [len(bb.body[f"layer{i}"]) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert all(isinstance(bb.body[f"layer{i}"][0], torchvision.models.resnet.BasicBlock) for i in (1, 2, 3, 4))
    feats = bb(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2), (1, 32, 1, 1)]
    with pytest.raises(ValueError, match="resnet10 has no ImageNet weights"):
        BackboneConfig(name="resnet10", pretrained="imagenet")


@pytest.mark.parametrize("name", ["resnet18", "resnext101_32x8d"])
def test_a_deformable_stage_starts_as_its_plain_conv_at_half_strength(name):
    """DCNv2 with zero offsets and masks sigmoid(0) = 0.5 computes 0.5 x the 3x3 conv it replaced (grouped for
    ResNeXt), and its offsets learn: they get a gradient."""
    from detector.backbone import ModulatedDeformConv

    torch.manual_seed(0)
    plain = getattr(torchvision.models, name)(weights=None).layer2[0].conv2
    dcn = ModulatedDeformConv(plain)
    x = torch.randn(1, plain.in_channels, 12, 12)
    assert torch.allclose(dcn(x), 0.5 * plain(x), atol=1e-5)
    dcn(x).pow(2).sum().backward()
    assert dcn.offset_mask.weight.grad.abs().sum() > 0


def test_deformable_stages_replace_the_3x3_convs_of_c3_to_c5_only():
    from detector.backbone import ModulatedDeformConv

    bb = Backbone("resnet18", 32, deformable_stages=(3, 4, 5))
    kinds = {f"layer{i}": {type(b.conv2) for b in bb.body[f"layer{i}"]} for i in (1, 2, 3, 4)}
    assert ModulatedDeformConv not in kinds["layer1"]  # (a plain conv, its frozen BN folded in)
    assert kinds["layer2"] == kinds["layer3"] == kinds["layer4"] == {ModulatedDeformConv}
    assert [f.shape[-1] for f in bb(torch.randn(1, 3, 128, 128))] == [16, 8, 4, 2, 1]


def test_a_deformable_stage_runs_under_bf16_autocast_on_cpu():
    """deform_conv2d has no CPU bf16 kernel: the block computes in fp32 and hands back bf16."""
    from detector.backbone import ModulatedDeformConv

    dcn = ModulatedDeformConv(torch.nn.Conv2d(8, 8, 3, padding=1))
    with torch.autocast("cpu", torch.bfloat16):
        out = dcn(torch.randn(1, 8, 10, 10).bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 8, 10, 10)


def test_deformable_stages_are_checked_against_freezing_and_repeats():
    from detector.config import BackboneConfig

    with pytest.raises(ValueError, match="lie in frozen_stages"):
        BackboneConfig(deformable_stages=[3], frozen_stages=2)
    with pytest.raises(ValueError, match="listed twice"):
        BackboneConfig(deformable_stages=[3, 3])
