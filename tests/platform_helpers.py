"""Helpers for platform tests: a tiny two-trial study on the synthetic set."""
from __future__ import annotations

import os
from pathlib import Path

import yaml


def write_study(path: Path, data_root: Path, trials=None, epochs: int = 1, max_images: int = 8, **extra) -> Path:
    study = {
        "study": path.stem,
        "paper": "iou_aware",
        "table": "test",
        "alpha_convention": "iou_aware",
        "base": {
            "model": {"backbone": {"name": "resnet18", "pretrained": "none", "norm": "bn", "frozen_stages": 0},
                      "fpn_width": 32, "head": {"depth": 1, "width": 32, "norm": "gn"}},
            "train": {"epochs": epochs, "batch_size": 4, "warmup_iters": 2},
        },
        "trials": trials or [{"name": "baseline", "set": {}}, {"name": "iou", "set": {"model.quality.branch": "iou"}}],
        "variants": ["cls", "alpha=0.5"],
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "profiles": {"smoke": {"base": {"data": {"kind": "synthetic", "root": str(data_root), "short": 128, "long": 128,
                                                "max_images": max_images}}}},
        "layout": {"columns": ["AP", "AP50"], "rows": [
            {"label": "RetinaNet", "trial": "baseline", "variant": "cls", "reference": {"AP": 34.4, "AP50": 54.1}},
            {"label": "IoU-aware", "trial": "iou", "variant": "alpha=0.5", "reference": {"AP": 35.5, "AP50": 54.1}}]},
    }
    study.update(extra)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def ablab_env(out_root: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return {**env, "ABLAB_OUTPUT_ROOT": str(out_root), "RAY_AUTH_MODE": "disabled", **extra}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")
