"""Shared fixtures: a small synthetic dataset written once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

from detector.data.synthetic import write_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """40 train / 16 val images at 128 px."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "ds", train=40, val=16, size=128, seed=3)


def tiny_config(root: Path, **overrides) -> dict:
    """A raw config for a tiny from-scratch RetinaNet (ResNet10) on the synthetic set (seconds per epoch on CPU)."""
    from detector.config import deep_merge

    raw = {
        "model": {"backbone": {"name": "resnet10", "pretrained": "none", "norm": "bn", "frozen_stages": 0},
                  "fpn_width": 32, "head": {"depth": 1, "width": 32}},
        "data": {"kind": "synthetic", "root": str(root), "short": 128, "long": 128},
        "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 5, "threads": 2},
    }
    return deep_merge(raw, overrides)
