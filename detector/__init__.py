"""Quality-aware single-stage detectors (RetinaNet, IoU-aware, RetinaNet-Conf, anchor-free with
Pseudo-IoU assignment) in plain PyTorch. No Ray, no MLflow: see the ``ablab`` package for those."""
from .config import Config, ConfigError, load_config, parse_config
from .model import Detector

__all__ = ["Config", "ConfigError", "Detector", "load_config", "parse_config"]
