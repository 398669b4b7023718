"""The quality branch is exactly one 3x3 conv, on the tower the paper puts it on, and `detach` decides
whether the quality loss reaches the regression branch."""
import pytest
import torch

from detector.config import ModelConfig
from detector.structures import Targets
from detector.model import Detector, build_detector


def _model(branch: str, detach: bool = True, arch: str = "retinanet") -> Detector:
    extra = {} if arch == "retinanet" else {"assigner": {"name": "inside"}, "box_loss": "giou"}
    cfg = ModelConfig(arch=arch, backbone={"name": "resnet18", "pretrained": "none", "norm": "bn", "frozen_stages": 0},
                      fpn_width=32, head={"depth": 2, "width": 32}, quality={"branch": branch, "detach": detach}, **extra)
    torch.manual_seed(0)
    return build_detector(cfg, num_classes=3)


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch,anchors", [("retinanet", 9), ("anchor_free", 1)])
@pytest.mark.parametrize("branch", ["iou", "conf"])
def test_quality_branch_adds_exactly_one_conv(branch, arch, anchors):
    added = _n_params(_model(branch, arch=arch)) - _n_params(_model("none", arch=arch))
    assert added == 32 * anchors * 3 * 3 + anchors  # one 3x3 conv, width -> A, with bias


def _quality_grads(branch: str, detach: bool) -> dict[str, float]:
    model = _model(branch, detach)
    images = torch.rand(2, 3, 128, 128)
    targets = Targets(torch.tensor([[[10.0, 10, 60, 70]], [[40.0, 30, 120, 100]]]), torch.tensor([[0], [2]]),
                      torch.zeros(2, 1, dtype=torch.bool))
    # Train a few steps so that the box regression is not the all-zero init (its IoU gradient would vanish).
    losses = model.criterion(*model(images), targets)
    model.zero_grad()
    losses["loss_quality"].backward()
    norm = lambda mod: sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)
    return {"reg_tower": norm(model.head.reg_tower), "box_out": norm(model.head.box_out), "cls_tower": norm(model.head.cls_tower)}


def test_iou_branch_dagger_sends_quality_gradient_into_the_box_regressor():
    # `iou` sits on the regression tower, so the tower always gets quality gradient through the conv;
    # what detach decides is whether the box output (and so the predicted box) is trained by it.
    assert _quality_grads("iou", detach=True)["box_out"] == 0
    assert _quality_grads("iou", detach=False)["box_out"] > 0


def test_conf_branch_dagger_gives_the_regression_tower_a_quality_gradient():
    detached, dagger = _quality_grads("conf", detach=True), _quality_grads("conf", detach=False)
    assert detached["reg_tower"] == 0 and detached["box_out"] == 0
    assert dagger["reg_tower"] > 0 and dagger["box_out"] > 0
    assert detached["cls_tower"] > 0  # the branch itself trains on the classification tower
