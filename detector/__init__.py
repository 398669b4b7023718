"""Quality-aware single-stage detectors (RetinaNet, IoU-aware, RetinaNet-Conf, anchor-free with
Pseudo-IoU assignment) in plain PyTorch. No Ray, no MLflow: see the ``ablab`` package for those."""
from typing import Any

from .config import Config, ConfigError, load_config, parse_config

__all__ = ["Config", "ConfigError", "Detector", "build_detector", "load_config", "parse_config"]


def __getattr__(name: str) -> Any:
    # The model (and so torch) loads on first use: processes that only read configs and datasets, such as
    # ablab's study driver, never pay torch's import.
    if name in ("Detector", "build_detector"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
