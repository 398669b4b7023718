"""Where each setting of a study's ``paper`` profile comes from, and a check that the profile still runs it.

The records live beside the profiles, in ``profiles/provenance/`` next to the study file: one file per paper
(``iou_aware.yaml``, ``pseudo_iou.yaml``, ``retinanet_conf.yaml``) and ``common.yaml``. A paper's file is a list
of sections; each maps dotted config fields to ``{value, source}`` (and ``other`` where the paper and the
authors' config disagree: the value the profile does not take and the ``--set`` that gives it, which ``ablab
show`` prints as the ``ablab run`` command that trains it), for the
studies it names (all of the paper's when it names none); a later section overrides an earlier one.
``common.yaml`` has the records every paper shares (``settings``, which the papers' sections override) and,
under ``unchecked``, the fields that change no number of a table (threads, logging), each with the reason.

A field a trial sets itself (its ``set``, its ``profiles.paper``, its grid) is the table's row: the trial is
its source, and its value is not compared with the record's.
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from detector.config import Config, ConfigError, parse_sets, read_yaml_mapping

from .naming import launch_args
from .launch import Launch
from .study import Study

PROFILE = "paper"
"""The profile the records describe: the paper's data, backbone and schedule."""
RECORDS = "profiles/provenance"
"""The records' folder, relative to the study file (as the profile files a study extends)."""


@dataclass(frozen=True)
class Record:
    """One field's provenance: its value, its source, and the other value where paper and authors' config
    disagree. ``checked`` False: shown, never compared (``common.yaml``'s ``unchecked``)."""

    source: str
    value: Any = None
    other: Optional[str] = None
    checked: bool = True

    @property
    def other_sets(self) -> list[str]:
        """The ``--set KEY=VALUE`` items that ``other`` names (the run that takes the other value)."""
        return re.findall(r"--set (\S+)", self.other or "")


def other_command(study: Study, rec: Record) -> str:
    """The command that runs ``study``'s paper profile with the record's other value: ``ablab run STUDY --profile
    paper --set KEY=VALUE ...``, quoted for a shell (parse_sets checks the items on the way)."""
    return f"ablab run {shlex.quote(study.source)} {launch_args(PROFILE, parse_sets(rec.other_sets))}"


def flat_settings(cfg: Config) -> dict[str, Any]:
    """Every leaf of the config as ``dotted.field -> value`` (tuples as lists, as YAML gives them). The
    inference variants by name: the study's shorthand says all of each."""
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value

    walk(cfg.model_dump(), "")
    out["inference.variants"] = [v.name for v in cfg.inference.variants]
    return out


def records_dir(study: Study) -> Path:
    """The folder of the records that describe ``study``."""
    return study.path_of(RECORDS)


def records_for(study: Study) -> dict[str, Record]:
    """The records that apply to ``study``'s paper profile: common.yaml's settings, its paper's sections in
    order over them, then common.yaml's unchecked fields."""
    folder = records_dir(study)
    common = read_yaml_mapping(folder / "common.yaml", "provenance")
    paper_file = folder / f"{study.paper}.yaml"
    sections = [("common.yaml: settings", {"settings": common.get("settings")})]
    sections += [(f"{paper_file.name}: sections.{i}", s)
                 for i, s in enumerate(read_yaml_mapping(paper_file, "provenance").get("sections") or [])]
    out: dict[str, Record] = {}
    for where, section in sections:
        if study.study not in section.get("studies", [study.study]):
            continue
        for field, rec in (section.get("settings") or {}).items():
            if not isinstance(rec, dict) or "source" not in rec or "value" not in rec:
                raise ConfigError(f"{folder}/{where}.settings.{field}: a record is {{value, source}} (and "
                                  f"other, optionally)")
            out[field] = Record(rec["source"], rec["value"], rec.get("other"))
    for field, reason in (common.get("unchecked") or {}).items():
        out.setdefault(field, Record(reason, checked=False))
    return out


def trial_sets(study: Study, trial: str) -> set[str]:
    """The dotted keys a trial sets itself under the paper profile: its rows of the table."""
    spec = next(t for t in study.trials if t.name == trial)
    return {*spec.set, *spec.profiles.get(PROFILE, {}), *study.grid, *spec.grid}


def _set_by(keys: set[str], field: str) -> bool:
    """True if one of ``keys`` is ``field`` or a section above it (``model.backbone`` sets its fields)."""
    return any(field == k or field.startswith(k + ".") for k in keys)


def _same(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-9 (YAML's 0.3333333333333333 is the config's 1 / 3)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def resolved_trials(study: Study) -> list[tuple[str, dict[str, Any]]]:
    """(trial name, flat settings) of each trial of the paper profile at seed 0 and its first grid point
    (seeds and grid values are the study's axes, not settings)."""
    seen: dict[str, dict[str, Any]] = {}
    launch = Launch.of(study, PROFILE)
    for point in launch.trial_points():
        if point["trial"] not in seen:
            seen[point["trial"]] = flat_settings(launch.trial_config(point))
    return list(seen.items())


def problems(study: Study) -> list[str]:
    """Where the resolved paper profile and the records part: a field without a record, or a value that is
    not the record's (in a trial that does not set the field itself). Empty: every setting is accounted for."""
    records = records_for(study)
    out = []
    for trial, settings in resolved_trials(study):
        own = trial_sets(study, trial)
        for field, value in settings.items():
            rec = records.get(field)
            if rec is None:
                out.append(f"{study.study} ({trial}): {field} = {value!r} has no provenance record")
            elif rec.checked and not _set_by(own, field) and not _same(value, rec.value):
                out.append(f"{study.study} ({trial}): {field} = {value!r}, the record says {rec.value!r} "
                           f"({rec.source})")
    return out


def show_lines(study: Study) -> list[str]:
    """The paper profile's resolved settings, one per line: field, value (each value with its trials, where the
    trials differ; a swept field's grid), source; the other value beneath, where paper and code disagree."""
    study.profile(PROFILE)
    records = records_for(study)
    trials = resolved_trials(study)
    grids = {t.name: {**study.grid, **t.grid} for t in study.trials}
    lines = [f"{study.source}: profile {PROFILE} ({study.paper} Table {study.table}, {len(trials)} trials); "
             f"the records: {records_dir(study)}"]
    width = max(len(f) for f in trials[0][1])
    for field in trials[0][1]:
        rec = records.get(field, Record("(no record)"))
        source = rec.source
        if any(_set_by(trial_sets(study, name), field) for name, _ in trials):
            source += " [the table's rows set it]"
        by_value: dict[str, list[str]] = {}  # each value shown, with the trials that have it
        for name, settings in trials:
            grid = grids[name].get(field)
            by_value.setdefault(f"grid {grid!r}" if grid else repr(settings[field]), []).append(name)
        shown = next(iter(by_value)) if len(by_value) == 1 else "; ".join(
            f"{value} ({', '.join(names)})" for value, names in by_value.items())
        lines.append(f"{field:<{width}}  {shown}  <- {source}")
        if rec.other:
            lines.append(f"{'':<{width}}  other: {rec.other}")
            if rec.other_sets:
                lines.append(f"{'':<{width}}  run it: {other_command(study, rec)}")
    return lines
