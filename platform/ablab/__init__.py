"""ablab: ablation studies of quality-aware single-stage detectors on Ray Tune x Ray Train, tracked in MLflow.

    import ablab
    df = ablab.results("table5", profile="smoke")   # one row per trial x inference variant
    ablab.results("table5", profile="paper", overrides=["train.steps=[9]"])   # the launch run with that --set
    ablab.claims("studies/table5.yaml", profile="smoke")   # each claim of the paper: ours, its interval, a verdict
    ablab.effects("studies/table5.yaml", profile="smoke")  # each change vs its baseline, per column
"""
from __future__ import annotations

from typing import Any


def results(study: str, profile: str | None = None, **kwargs: Any):
    """A pandas DataFrame of a study's trials x inference variants, read from MLflow (see ablab.results)."""
    from .query import results as _results

    return _results(study, profile=profile, **kwargs)


def claims(study: str, profile: str = "smoke", **kwargs: Any):
    """A pandas DataFrame of a study file's claims checked against its runs in MLflow (see ablab.query.claims)."""
    from .query import claims as _claims

    return _claims(study, profile=profile, **kwargs)


def effects(study: str, profile: str = "smoke", **kwargs: Any):
    """A pandas DataFrame of each change of a study file against its baseline, per column (ablab.query.effects)."""
    from .query import effects as _effects

    return _effects(study, profile=profile, **kwargs)


__all__ = ["claims", "effects", "results"]
