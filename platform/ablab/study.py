"""The study file: which detectors to train (training axes -> Ray Tune grid), which inference variants to
score from each (inference axis, one pass per trial), how the paper's table is laid out, the paper's
reference numbers, and the profiles (``paper``, ``smoke``) that say on what data and at what scale.

Validated with pydantic: unknown keys are errors, and every error names its field path.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from detector.config import (ConfigError, VariantConfig, deep_merge, format_validation_error, parse_variant,
                             read_yaml_mapping)

from .naming import variant_slug
from .paths import NAME, check_name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TrialSpec(Strict):
    """One trained model of the study (a point on the training axis)."""

    name: str = Field(pattern=NAME, max_length=128)
    """Becomes part of the trial's folder name: letters, digits, ``._-``, no leading dot."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Dotted config overrides applied on top of the profile, e.g. ``model.quality.branch: iou``."""
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Dotted overrides for one profile only, applied after ``set``: e.g. the paper's ResNet-101 row gets a
    ResNet-34 stand-in under ``smoke``."""
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """A sweep of this trial alone (dotted key -> values), crossed with the study's grid: e.g. the Pseudo-IoU
    threshold T of Table 1(a). Table rows pick a value with ``where``."""


class Resources(Strict):
    workers: int = Field(1, ge=1)
    """Ray Train workers per trial (DDP processes)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    """Upper bound; the platform also caps it by what the cluster can hold, so a study cannot deadlock."""
    max_failures: int = Field(1, ge=0)
    """Worker restarts per trial (from the last checkpoint) before the trial fails."""
    executor: Literal["auto", "tune", "train"] = "auto"
    """Where a trial trains: ``tune``, in the Ray Tune trial's own (reused) process, which starts in a second;
    ``train``, on a Ray Train TorchTrainer's workers (DDP; needed for more than one worker). ``auto``: ``tune``
    for one worker, else ``train``."""

    @model_validator(mode="after")
    def _one_worker_in_a_trial(self) -> "Resources":
        if self.executor == "tune" and self.workers > 1:
            raise ValueError(f"executor: 'tune' trains in the trial's one process; workers: {self.workers} needs "
                             f"'train' (or 'auto')")
        return self

    @property
    def in_trial(self) -> bool:
        """Whether the trial trains in its own Tune process (else on TorchTrainer workers)."""
        return self.executor == "tune" or (self.executor == "auto" and self.workers == 1)


class Row(Strict):
    label: str
    trial: Optional[str] = None
    """The trained model this row reads (None for a cited row)."""
    variant: Optional[str] = None
    """The inference variant this row reads (default: the study's first)."""
    cited: bool = False
    """A row the paper only cites (other methods): shown with the paper's numbers, never run."""
    where: dict[str, Any] = Field(default_factory=dict)
    """Grid values this row reads (dotted keys of its trial's or the study's grid), e.g.
    ``{model.assigner.threshold: 0.4}``; rows without it average over the trial's grid points."""
    not_reproduced: Optional[str] = None
    """Why a row the paper ran is not run here (e.g. a model this platform does not build): shown, never run."""
    reference: dict[str, Optional[float]] = Field(default_factory=dict)
    """The paper's numbers for this row, by column."""
    baseline: Optional[str] = None
    """The label of the measured row this row's change is read against (`ablab table --effects`), where no
    claim pairs them already."""

    @model_validator(mode="after")
    def _trial_unless_cited(self) -> "Row":
        if self.cited or self.not_reproduced:
            if self.trial is not None:
                raise ValueError(f"row {self.label!r}: a cited or not-reproduced row has no trial")
        elif self.trial is None:
            raise ValueError(f"row {self.label!r}: a row names its trial (or is cited / not_reproduced)")
        return self

    @property
    def measured(self) -> bool:
        return self.trial is not None


class Table(Strict):
    caption: str = ""
    columns: list[str]
    """Column headers as in the paper; each reads the metric of the same name unless ``metrics`` maps it."""
    metrics: dict[str, str] = Field(default_factory=dict)
    """Column -> metric as the evaluation reports it, where they differ (e.g. VOC's ``AP: mAP``)."""
    scale: float = Field(100.0, gt=0)
    """Multiply our fractions by this to match the paper's units (100 for percent, 1 for fractions)."""
    rows: list[Row]

    def metric(self, column: str) -> str:
        return self.metrics.get(column, column)

    @model_validator(mode="after")
    def _metrics_name_columns(self) -> "Table":
        unknown = sorted(set(self.metrics) - set(self.columns))
        if unknown:
            raise ValueError(f"metrics: {unknown} are not columns ({self.columns})")
        return self


class Claim(Strict):
    """One finding of the paper that the study tests: ``row`` differs from ``vs`` on ``metric`` by ``paper``
    (in the table's units, e.g. +3.8 AP80 points). ``ablab table`` gives ours with its interval and a verdict."""

    row: str
    """The label of a measured layout row (the method)."""
    vs: str
    """The label of the measured layout row it is compared with (the baseline)."""
    metric: str
    """A layout column."""
    paper: Optional[float] = None
    """The paper's difference ``row - vs``; default: the difference of the two rows' references."""
    says: str = ""
    """The claim in the paper's words, shown beside the verdict."""


class Profile(Strict):
    description: str = ""
    extends: Optional[str] = None
    """A YAML file of config shared by several studies' profiles (path relative to the study file);
    ``base`` is merged over it."""
    base: dict[str, Any] = Field(default_factory=dict)
    """Config merged over the study's base for this profile (data set, backbone, schedule, sizes)."""
    resources: Optional[Resources] = None
    trials: Optional[list[str]] = None
    """Restrict the profile to these trials (None: all)."""
    seeds: Optional[list[Annotated[int, Field(ge=0, le=2**32 - 1)]]] = Field(None, min_length=1)
    """This profile's seeds instead of the study's (e.g. several where a claim needs them at smoke scale)."""
    trial_seeds: dict[str, list[Annotated[int, Field(ge=0, le=2**32 - 1)]]] = Field(default_factory=dict)
    """Seeds of named trials instead of the profile's: e.g. the rows a claim between models reads get the seeds
    its verdict needs while the rest run one (``ablab run --seeds N`` gives every trial N instead)."""
    min_seeds: Optional[int] = Field(None, ge=2)
    """This profile's seed minimum for a between-model verdict, instead of the study's."""


class Study(Strict):
    study: str = Field(pattern=NAME, max_length=128)
    """The study's folder under the output root and its MLflow experiment: letters, digits, ``._-``, no leading dot."""
    paper: Literal["iou_aware", "pseudo_iou", "retinanet_conf"]
    table: str
    title: str = ""
    alpha_convention: Literal["iou_aware", "conf"] = "iou_aware"
    """What the alpha of this study's variants weighs (iou_aware: p; conf: the object confidence q)."""
    base: dict[str, Any] = Field(default_factory=dict)
    trials: list[TrialSpec]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """Extra training axes crossed with the trials: dotted key -> values."""
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    min_seeds: int = Field(3, ge=2)
    """The paired seeds a claim between two separately trained models needs for a verdict (ablab.evidence): with
    fewer it is inconclusive, whatever its val-image interval says. At least 2: one seed says nothing of training
    noise."""
    variants: list[str | VariantConfig] = Field(default_factory=list)
    """Inference axis: shorthand (``cls``, ``none``, ``alpha=0.4``, ``alpha=0.4,truth``, ``cls,q>0.5``) or full specs."""
    resources: Resources = Resources()
    profiles: dict[str, Profile]
    table_layout: Optional[Table] = Field(None, alias="layout")
    claims: list[Claim] = Field(default_factory=list)
    """The paper's findings this study tests (each a pair of layout rows on one column)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)
    _source: str = PrivateAttr("study")

    @property
    def source(self) -> str:
        """The file the study was read from (load_study), for error messages."""
        return self._source

    def path_of(self, path: str) -> Path:
        """A path the study names (a data root, a weights file), absolute: a relative one is relative to the study
        file's folder (the profile files it extends included), wherever the command runs."""
        p = Path(path).expanduser()
        base = Path(self._source).resolve().parent if self._source != "study" else Path.cwd()
        return (p if p.is_absolute() else base / p).resolve()

    @model_validator(mode="after")
    def _cross_references(self) -> "Study":
        for i, v in enumerate(self.variants):
            if isinstance(v, str):
                try:
                    parse_variant(v, self.alpha_convention)
                except ConfigError as err:
                    raise ValueError(f"variants.{i}: {err}") from None
        slugs = [variant_slug(v.name) for v in self.variant_configs()]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"variants: two names become the same metric key ({sorted(slugs)}): rename one")
        names = [t.name for t in self.trials]
        for where, seeds in [("seeds", self.seeds)] + [(f"profiles.{n}.seeds", p.seeds) for n, p in self.profiles.items()] \
                + [(f"profiles.{n}.trial_seeds.{t}", s) for n, p in self.profiles.items() for t, s in p.trial_seeds.items()]:
            if seeds is not None and len(set(seeds)) != len(seeds) or seeds == []:
                raise ValueError(f"{where}: {seeds} must list distinct seeds (at least one)")
        for pname, p in self.profiles.items():
            for t in p.trial_seeds:
                if t not in names or (p.trials is not None and t not in p.trials):
                    raise ValueError(f"profiles.{pname}.trial_seeds: {t!r} is not a trial of the profile "
                                     f"(its trials: {p.trials if p.trials is not None else names})")
        for where, grid in [("grid", self.grid)] + [(f"trials.{t.name}.grid", t.grid) for t in self.trials]:
            for key, values in grid.items():
                encoded = [json.dumps(v) for v in values]
                if not values or len(set(encoded)) != len(encoded):
                    raise ValueError(f"{where}.{key}: {values} must list distinct values (at least one)")
        for pname in self.profiles:
            try:
                check_name(f"profiles.{pname}", pname)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        if len(set(names)) != len(names):
            raise ValueError(f"trials: duplicate names in {names}")
        for t in self.trials:
            for pname in t.profiles:
                if pname not in self.profiles:
                    raise ValueError(f"trials.{t.name}.profiles: unknown profile {pname!r} (known: {sorted(self.profiles)})")
        for pname, p in self.profiles.items():
            for t in p.trials or []:
                if t not in names:
                    raise ValueError(f"profiles.{pname}.trials: unknown trial {t!r} (known: {names})")
        if self.table_layout:
            variant_names = {v.name for v in self.variant_configs()}
            for i, row in enumerate(self.table_layout.rows):
                if row.trial is not None and row.trial not in names:
                    raise ValueError(f"layout.rows.{i}.trial: unknown trial {row.trial!r} (known: {names})")
                if row.variant is not None and row.variant not in variant_names:
                    raise ValueError(f"layout.rows.{i}.variant: unknown variant {row.variant!r} (known: {sorted(variant_names)})")
                grid = self.grid_of(row.trial) if row.trial is not None else {}
                for key, value in row.where.items():
                    if key not in grid or value not in grid[key]:
                        raise ValueError(f"layout.rows.{i}.where.{key}: {value!r} is not a grid value of trial "
                                         f"{row.trial!r} (its grid: {grid})")
        self._check_claims()
        return self

    def _check_claims(self) -> None:
        measured = {r.label for r in self.table_layout.rows if r.measured} if self.table_layout else set()
        for i, row in enumerate(self.table_layout.rows if self.table_layout else []):
            if row.baseline is not None and (row.baseline not in measured or not row.measured or row.baseline == row.label):
                raise ValueError(f"layout.rows.{i}.baseline: {row.baseline!r} is not another measured row's label "
                                 f"(of a measured row)")
        if self.claims and not self.table_layout:
            raise ValueError("claims: a study with claims needs a layout (claims compare its rows)")
        rows = {r.label: r for r in self.table_layout.rows} if self.table_layout else {}
        labels = [r.label for r in self.table_layout.rows] if self.table_layout else []
        for i, claim in enumerate(self.claims):
            for field in ("row", "vs"):
                label = getattr(claim, field)
                if label not in rows:
                    raise ValueError(f"claims.{i}.{field}: {label!r} is not a layout row label")
                if labels.count(label) > 1:
                    raise ValueError(f"claims.{i}.{field}: {labels.count(label)} layout rows are labelled {label!r}")
                if not rows[label].measured:
                    raise ValueError(f"claims.{i}.{field}: row {label!r} is not measured (cited or not reproduced)")
            if claim.row == claim.vs:
                raise ValueError(f"claims.{i}: row and vs are the same row ({claim.row!r})")
            if claim.metric not in self.table_layout.columns:
                raise ValueError(f"claims.{i}.metric: {claim.metric!r} is not a column ({self.table_layout.columns})")
            if claim.paper is None:
                a, b = rows[claim.row].reference.get(claim.metric), rows[claim.vs].reference.get(claim.metric)
                if a is None or b is None:
                    raise ValueError(f"claims.{i}.paper: the rows have no reference {claim.metric} to take the "
                                     f"paper's difference from: give it")
                claim.paper = round(a - b, 6)
            if claim.paper == 0:
                raise ValueError(f"claims.{i}.paper: 0 has no direction to reproduce; a claim names a difference")

    def variant_configs(self) -> list[VariantConfig]:
        return [v if isinstance(v, VariantConfig) else parse_variant(v, self.alpha_convention) for v in self.variants]

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(f"profile {name!r} not in study {self.study} (has: {sorted(self.profiles)})")
        return self.profiles[name]

    def grid_of(self, name: str) -> dict[str, list[Any]]:
        """The grid ``name`` trains over: the study's crossed with the trial's own."""
        return {**self.grid, **next(t for t in self.trials if t.name == name).grid}


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, path: str = "") -> Any:
    """${VAR} and ${VAR:-default} in strings: paper profiles take their data paths from the environment."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {var} is not set (it gives {m.group(0)})")
        return _ENV.sub(sub, value)
    return value


def load_study(path: str | Path) -> Study:
    raw = read_yaml_mapping(path, "study")
    try:
        study = Study.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from None
    study._source = str(path)  # noqa: SLF001 (its loader)
    for name, profile in study.profiles.items():
        if profile.extends:
            shared = Path(path).resolve().parent / profile.extends
            if not shared.is_file():
                raise ConfigError(f"profiles.{name}.extends: file not found: {shared}")
            profile.base = deep_merge(read_yaml_mapping(shared, f"profiles.{name}.extends"), profile.base)
            profile.extends = None  # merged: a Study is self-contained once loaded
    return study
