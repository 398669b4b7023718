"""Shared fixtures: a small synthetic dataset written once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

from detector.data.synthetic import write_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """40 train / 16 val images at 128 px."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "ds", train=40, val=16, size=128, seed=3)


SMOKE_PROFILE = Path(__file__).resolve().parents[1] / "studies" / "profiles" / "smoke.yaml"


def smoke_model(**overrides) -> dict:
    """The model of the studies' shared smoke profile (studies/profiles/smoke.yaml), with ``overrides``
    merged in: the one place the small from-scratch detector is configured."""
    import yaml

    from detector.config import deep_merge

    return deep_merge(yaml.safe_load(SMOKE_PROFILE.read_text())["model"], overrides)


def tiny_config(root: Path, **overrides) -> dict:
    """A raw config for the smoke model made narrower still (32 channels, a one-conv head) on the synthetic
    set: seconds per epoch on CPU."""
    from detector.config import deep_merge

    raw = {
        "model": smoke_model(fpn_width=32, head={"depth": 1, "width": 32, "norm": "none"}, anchor_scale=4.0),
        "data": {"kind": "synthetic", "root": str(root), "short": 128, "long": 128},
        "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 5, "threads": 2},
    }
    return deep_merge(raw, overrides)


EXECUTORS = ("tune", "train")
"""Where a one-worker trial trains (study `resources.executor`): in the Tune trial's own process, or on a Ray
Train TorchTrainer's worker. The failure and resume tests run on both."""
TRIAL_PROCESS = {"tune": "ImplicitFunc", "train": "RayTrainWorker"}
"""The process title (``ray::<name>...``) of the process a trial trains in, per executor."""


@pytest.fixture(params=EXECUTORS)
def executor(request) -> str:
    return request.param


class RayStarted(BaseException):
    """Raised by the stand-in for start_ray: outside Exception, so no handler in ablab can swallow it."""


@pytest.fixture
def no_ray(monkeypatch):
    """``ablab run`` / ``resume`` stop where Ray would start (RayStarted): what a command checks and writes
    before it is all that happens."""
    from ablab import runner

    def refuse(*args, **kwargs):
        raise RayStarted("a user error reached start_ray")

    monkeypatch.setattr(runner, "start_ray", refuse)  # the name run_study calls (ablab.cluster's)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
