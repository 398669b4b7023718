"""A launch: one study file run under one profile with the command line's ``--set`` items, and the seeds it trains.

Every command resolves its launch once, at its edge (``open_launch``), and hands it on: the study stays a plain
schema, and nothing below the commands takes a profile name. A launch names its folder and its runs
(``key``), its trials (``trial_points``) and each trial's config (``trial_config``); ``plan_study`` resolves
every config and checks data and weights before anything runs (a ``Plan``).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from pydantic import ValidationError

from detector.config import (Config, ConfigError, apply_sets, deep_merge, format_validation_error, parse_config,
                             parse_sets, set_dotted, set_text, sets_source)
from .naming import LAUNCH_FILE, launch_args, launch_key, point_key
from .paths import results_root, study_dir
from .study import Profile, Resources, Study, expand_env, load_study

RESOURCES = "resources."
"""The ``--set`` prefix of a launch's resources (``--set resources.workers=2``); any other key is a config field."""


@dataclass(frozen=True)
class Launch:
    """One launch of a study: ``study`` under ``profile`` with ``sets`` (the command line's ``--set``, applied to
    every trial config after the profile and the trials' own overrides: they win), training each trial with its
    seeds (``seeds``, or ``trial_seeds`` for the trials it names). Made by ``Launch.of`` (or ``open_launch``);
    ``with_seeds`` gives the same launch with other seeds."""

    study: Study
    profile: str
    sets: dict[str, Any]
    seeds: tuple[int, ...]
    trial_seeds: dict[str, tuple[int, ...]]
    study_path: str
    """The study file as the command named it (for the commands the log suggests)."""

    @classmethod
    def of(cls, study: Study, profile: str, sets: Optional[dict[str, Any]] = None,
           study_path: Optional[str] = None) -> "Launch":
        """``study`` under ``profile`` with ``sets``, checked: a study axis is refused (the seeds, a grid key, the
        variants: their values are the trials' keys and the table's rows, which one value for all would make
        lie), and so is a bad resources value, before anything runs. ``study_path``: as the command named the
        file (default: the file it was read from)."""
        spec = study.profile(profile)
        sets = dict(sets or {})
        _check_sets(study, sets)
        launch = cls(study, profile, sets, (), {}, study_path or study.source).with_seeds(
            spec.seeds or study.seeds, spec.trial_seeds)
        try:  # now: a bad value is an error before anything runs
            launch.resources
        except ValidationError as err:
            shown = " ".join(f"--set {set_text(k, v)}" for k, v in sets.items() if k.startswith(RESOURCES))
            raise ConfigError(f"{study.source} with {shown}: {format_validation_error(err, 'resources')}") from None
        return launch

    # ---- its names ----

    @property
    def spec(self) -> Profile:
        return self.study.profile(self.profile)

    @property
    def key(self) -> str:
        """The launch's name: its folder's, and its runs' ``ablab.profile`` tag (naming.launch_key)."""
        return launch_key(self.profile, self.sets)

    @property
    def args(self) -> str:
        """``--profile P [--set K=V ...]``: what names this launch in the commands the log suggests."""
        return launch_args(self.profile, self.sets)

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` items, as the commands (and ablab.results) take them."""
        return [set_text(k, v) for k, v in self.sets.items()]

    def folder(self, out_root: Optional[str] = None) -> Path:
        """``<output root>/<study>/<key>``, checked to stay inside the output root."""
        return study_dir(self.study.study, self.profile, out_root, self.sets)

    def sibling(self, profile: str) -> "Launch":
        """The same study under another of its profiles, without ``--set`` (e.g. the paper's, to compare with)."""
        return Launch.of(self.study, profile)

    def relabelled(self, study: Study) -> "Launch":
        """This launch over a copy of its study (e.g. rows labelled as trained: labels.as_trained)."""
        return dataclasses.replace(self, study=study)

    # ---- what it trains ----

    @property
    def resources(self) -> Resources:
        """The profile's resources (the study's where it names none), with the launch's ``--set resources.*``."""
        base = self.spec.resources or self.study.resources
        sets = {k.removeprefix(RESOURCES): v for k, v in self.sets.items() if k.startswith(RESOURCES)}
        return Resources.model_validate({**base.model_dump(), **sets}) if sets else base

    @property
    def min_seeds(self) -> int:
        """The paired seeds a claim between models needs for a verdict: the profile's, else the study's."""
        return self.spec.min_seeds or self.study.min_seeds

    def seeds_of(self, trial: str) -> tuple[int, ...]:
        """The seeds ``trial`` trains with."""
        return self.trial_seeds.get(trial) or self.seeds

    def with_seeds(self, seeds: Sequence[int], trial_seeds: Optional[dict[str, Sequence[int]]] = None) -> "Launch":
        """This launch with other seeds (``--seeds N``, or what a resumed launch ran): ``seeds`` for every trial but
        those ``trial_seeds`` names."""
        return dataclasses.replace(self, seeds=tuple(seeds),
                                   trial_seeds={t: tuple(s) for t, s in (trial_seeds or {}).items()})

    def trial_names(self) -> list[str]:
        allowed = self.spec.trials
        return [t.name for t in self.study.trials if allowed is None or t.name in allowed]

    def trial_count(self) -> int:
        """len(trial_points()), without building them."""
        return sum(len(self.seeds_of(n)) * math.prod(len(v) for v in self.study.grid_of(n).values())
                   for n in self.trial_names())

    def trial_points(self) -> list[dict[str, Any]]:
        """Every training point: {"trial": name, "seed": s, <grid key>: value, ...} for each trial x seed x its
        grid (the study's crossed with the trial's own). A grid value may itself be a list (a grid over
        ``train.steps``: ``[[8, 11], [9]]``)."""
        points = []
        for name in self.trial_names():
            grid = self.study.grid_of(name)
            for seed, *values in itertools.product(self.seeds_of(name), *grid.values()):
                points.append({"trial": name, "seed": seed, **dict(zip(grid, values))})
        return points

    def first_config(self, trial: str) -> Optional[Config]:
        """The config of ``trial``'s first point, None where the launch does not train it."""
        point = next((p for p in self.trial_points() if p["trial"] == trial), None)
        return self.trial_config(point) if point else None

    def trial_config(self, point: dict[str, Any]) -> Config:
        """The full detector config of one training point, the launch's ``--set`` applied last."""
        study = self.study
        raw = deep_merge(study.base, self.spec.base)
        spec = next(t for t in study.trials if t.name == point["trial"])
        overrides = {**spec.set, **spec.profiles.get(self.profile, {}),
                     **{k: v for k, v in point.items() if k not in ("trial", "seed")}}
        source = f"{study.source} (profile {self.profile}, trial {point['trial']})"
        for key, value in overrides.items():
            try:
                raw = set_dotted(raw, key, value)
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}") from None
        raw = set_dotted(raw, "train.seed", point["seed"])
        sets = {k: v for k, v in self.sets.items() if not k.startswith(RESOURCES)}  # resources' own
        if sets:  # before the variants: which apply depends on the quality branch, which they may set
            try:
                raw = apply_sets(raw, sets)
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}") from None
            source = sets_source(source, sets)
        variants = study.variant_configs()
        if variants:
            branch = parse_config(raw, source=source).model.quality.branch
            applicable = [v for v in variants if branch != "none" or not v.needs_predicted_quality]
            raw = set_dotted(raw, "inference.variants", [v.model_dump() for v in applicable])
        return parse_config(raw, source=source)

    def resolve(self) -> list[tuple[dict[str, Any], Config]]:
        """(point, config) for every trial, with ${ENV} paths expanded and data and weights paths made absolute:
        all errors before any compute."""
        out = []
        workers = self.resources.workers
        for point in self.trial_points():
            cfg = self.trial_config(point)
            cfg = parse_config(expand_env(cfg.model_dump()), source=f"{self.study.source} (trial {point['trial']})")
            if cfg.train.batch_size % workers:  # each DDP worker takes batch_size / workers; the lr is scaled for all
                raise ConfigError(f"{self.study.source} (trial {point['trial']}): train.batch_size: must split evenly "
                                  f"over resources.workers: {workers} (got {cfg.train.batch_size})")
            # Ray workers need not share the driver's working directory: pin data and weights paths now.
            cfg.data.root = str(self.study.path_of(cfg.data.root))
            if cfg.model.backbone.pretrained not in ("none", "imagenet"):
                cfg.model.backbone.pretrained = str(self.study.path_of(cfg.model.backbone.pretrained))
            out.append((point, cfg))
        _check_rows_evaluable(self.study, out)
        return out


def _check_sets(study: Study, sets: dict[str, Any]) -> None:
    axes = {"train.seed": "the study's seed axis (--seeds N sets the seeds)",
            **{k: "a grid axis of the study" for k in study.grid},
            **{k: f"a grid axis of trial {t.name}" for t in study.trials for k in t.grid}}
    if study.variants:
        axes["inference.variants"] = "the study's inference axis (its variants)"
    for key, value in sets.items():
        for axis, what in axes.items():
            if key == axis or axis.startswith(key + ".") or key.startswith(axis + "."):
                raise ConfigError(f"--set {set_text(key, value)}: {axis} is {what} in {study.source}: edit the "
                                  f"study to change it")
    if "resources" in sets:
        raise ConfigError(f"{study.source}: --set {set_text('resources', sets['resources'])}: set one field of "
                          f"it, e.g. --set resources.workers=2")


def _check_rows_evaluable(study: Study, resolved: list[tuple[dict[str, Any], Config]]) -> None:
    """Every table row must read a variant its trial actually evaluates (e.g. no alpha on a model without q);
    a row without one reads its trial's first (``ablab.rows.row_variant``)."""
    if not study.table_layout:
        return
    evaluated = {p["trial"]: {v.name for v in c.variants()} for p, c in resolved}
    for i, row in enumerate(study.table_layout.rows):
        if not row.measured or row.trial not in evaluated:
            continue
        variant = row.variant or next(iter(evaluated[row.trial]), None)
        if variant not in evaluated[row.trial]:
            raise ConfigError(f"layout.rows.{i} ({row.label!r}): trial {row.trial!r} cannot be scored by variant "
                              f"{variant!r} (it evaluates {sorted(evaluated[row.trial])})")


def open_launch(study_path: str | Path, profile: str, overrides: Sequence[str] = ()) -> Launch:
    """The launch a command names: the study file, ``--profile`` and its ``--set`` items (parse_sets)."""
    return Launch.of(load_study(study_path), profile, parse_sets(overrides), str(study_path))


# ---- a launch resolved: every config, its folder ------------------------------------------------------------------

@dataclass
class Plan:
    """A launch with everything resolved before any compute: its trial configs and where its results go."""

    launch: Launch
    points: list[dict[str, Any]]
    configs: dict[str, Config]
    out_dir: Path

    @property
    def study(self) -> Study:
        return self.launch.study

    @property
    def study_path(self) -> str:
        return self.launch.study_path

    @property
    def key(self) -> str:
        return self.launch.key

    @property
    def args(self) -> str:
        return self.launch.args

    @property
    def resources(self) -> Resources:
        return self.launch.resources

    def concurrency(self, total: dict[str, float]) -> int:
        """Trials that fit at once on a cluster of ``total`` CPUs/GPUs (a trial holds its workers' resources: in
        its own process, or on its Train workers while its driver holds none), capped by the study: a study never
        waits on resources that can never free up."""
        res = self.resources
        per_trial_cpu = res.workers * res.cpus_per_worker
        if per_trial_cpu > total.get("CPU", 0):
            raise ConfigError(f"resources: a trial needs {per_trial_cpu:g} CPUs ({res.workers} workers x "
                              f"{res.cpus_per_worker:g}) but the cluster has {total.get('CPU', 0):g}")
        fits = int(total.get("CPU", 0) // per_trial_cpu)
        if res.gpus_per_worker:
            need = res.workers * res.gpus_per_worker
            if need > total.get("GPU", 0):
                raise ConfigError(f"resources: a trial needs {need:g} GPUs but the cluster has {total.get('GPU', 0):g}")
            fits = min(fits, int(total["GPU"] // need))
        if res.max_concurrent_trials:
            fits = min(fits, res.max_concurrent_trials)
        return max(1, min(fits, len(self.points)))


MAX_TRIALS = 10_000
"""A larger grid is refused unless --allow-large-grid: at that size it is more likely a typo than a plan."""


def plan_study(launch: Launch, out_root: Optional[str] = None, check_data: bool = True,
               allow_large_grid: bool = False, seeds: Optional[int] = None, resume: bool = False) -> Plan:
    """Validate every trial config of ``launch``, find every weights file, and open every data split once
    (which also writes the synthetic set if missing): a bad study, missing weights or data fail here,
    before Ray starts. ``check_data=False`` (submit) leaves files to the cluster that will read them.
    ``seeds``: run seeds 0..N-1 instead of the profile's (not on resume: it keeps the seeds its launch ran)."""
    if resume:  # the launch where it is: a Ray job's, resumed from the checkout, is in ~/ablab-outputs
        out_root = results_root(launch.study.study, out_root)
    out_dir = launch.folder(out_root)
    launch_file = out_dir / LAUNCH_FILE
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds: {seeds} must be at least 1")
        launch = launch.with_seeds(range(seeds))
    elif resume and launch_file.is_file():
        ran = json.loads(launch_file.read_text())  # a launch from before trial_seeds ran its seeds on every trial
        launch = launch.with_seeds(ran.get("seeds", launch.spec.seeds or launch.study.seeds), ran.get("trial_seeds", {}))
    count = launch.trial_count()
    if count > MAX_TRIALS and not allow_large_grid:
        raise ConfigError(f"{launch.study_path}: grid: profile {launch.profile} has {count} trials (trials x seeds x "
                          f"grid values), more than {MAX_TRIALS}; pass --allow-large-grid if that is meant")
    resolved = launch.resolve()
    if not resolved:
        raise ConfigError(f"{launch.study_path}: profile {launch.profile}: no trials")
    configs = {point_key(p): c for p, c in resolved}
    if check_data:
        _check_data(launch.study_path, configs)
        _check_weights(launch.study_path, configs)
    return Plan(launch, [p for p, _ in resolved], configs, out_dir)


def _check_data(study_path: str, configs: dict[str, Config]) -> None:
    from detector.data import build_split  # torch: not for the launch's readers (ablab.results)

    seen = set()
    for key, cfg in configs.items():
        for split in (cfg.data.train_split, cfg.data.val_split):
            if (cfg.data.kind, cfg.data.root, split) in seen:
                continue
            seen.add((cfg.data.kind, cfg.data.root, split))
            ds = build_split(cfg.data, split)
            if split == cfg.data.train_split and not ds.labelled:
                raise ConfigError(f"{study_path} (trial {key}): data.train_split: {split!r} has no annotations to "
                                  f"train on")


def _check_weights(study_path: str, configs: dict[str, Config]) -> None:
    pretrained = {c.model.backbone.model_dump_json(): (k, c) for k, c in configs.items()
                  if c.model.backbone.pretrained != "none"}
    if not pretrained:
        return  # no torch import for the smoke profiles
    from detector.backbone import WeightsNotFound, weights_file

    for key, cfg in pretrained.values():
        try:
            weights_file(cfg.model.backbone.name, cfg.model.backbone.pretrained)
        except WeightsNotFound as err:
            raise ConfigError(f"{study_path} (trial {key}): {err}") from None
