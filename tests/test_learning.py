"""The detectors actually learn: trained from scratch on the synthetic set on 2 CPU cores within a few
minutes, they reach a COCO AP50 on the val split that an untrained model (AP50 ~0) cannot.

They train in fp32 whatever the CPU (``precision: auto`` would pick bf16 on some): the thresholds hold on
every machine, and the time is the same on all of them. The thresholds sit below the values measured on a
2-core machine (given beside them); see README.
"""
import time

import pytest
import torch

from conftest import smoke_model
from detector.config import parse_config
from detector.data import write_synthetic
from detector.engine import evaluate, train
from detector.model import build_detector

pytestmark = pytest.mark.slow
# Measured in fp32 with ResNet10 on the generator-2 set (2-core AMD EPYC, 2026-12-07), 5 epochs of 400 images at
# batch 4, 0.8 min each: COCO AP50 0.990 (RetinaNet) and 0.956 (anchor-free, Pseudo-IoU T=0.4). The bars sit a
# quarter below: fp32 sums round differently on other CPUs' kernels and five epochs from scratch carry that into
# the second digit; an untrained model scores ~0, a broken assigner or loss far below them.
RETINANET_AP50 = 0.75
ANCHOR_FREE_AP50 = 0.7

SMOKE = {
    "model": smoke_model(),  # studies/profiles/smoke.yaml
    "train": {"epochs": 5, "batch_size": 4, "lr": 0.16, "warmup_iters": 100, "steps": [4],
              "precision": "fp32", "threads": 2, "val_every": 0},  # evaluated once, at the end
}


@pytest.fixture(scope="module")
def learning_data(tmp_path_factory):
    """400 train / 100 val images at 256 px; models see them at 128 px."""
    return write_synthetic(tmp_path_factory.mktemp("learn") / "ds", train=400, val=100, size=256, seed=0)


def _config(root, **model):
    raw = {**SMOKE, "model": {**SMOKE["model"], **model},
           "data": {"kind": "synthetic", "root": str(root), "short": 128, "long": 128}}
    return parse_config(raw)


def test_untrained_model_scores_about_zero(learning_data):
    cfg = _config(learning_data)
    torch.manual_seed(0)
    ap50 = evaluate(build_detector(cfg.model, 6), cfg).metrics["cls/AP50"]
    assert ap50 < 0.02


def _train_and_score(cfg, label: str) -> float:
    t0 = time.perf_counter()
    state = train(cfg)
    minutes = (time.perf_counter() - t0) / 60
    ap50 = evaluate(state.model, cfg).metrics["cls/AP50"]
    print(f"{label}: AP50 {ap50:.3f} after {minutes:.1f} min")
    return ap50


def test_retinanet_learns_the_synthetic_set(learning_data):
    assert _train_and_score(_config(learning_data), "retinanet") >= RETINANET_AP50


def test_anchor_free_pseudo_iou_learns_the_synthetic_set(learning_data):
    cfg = _config(learning_data, arch="anchor_free", box_loss="giou", assigner={"name": "pseudo_iou", "threshold": 0.4})
    assert _train_and_score(cfg, "anchor-free pseudo_iou T=0.4") >= ANCHOR_FREE_AP50
