"""Where ablab writes, and which names may become part of a path. No Ray, no MLflow.

Study ids, profile names and trial names become folders under the output root; they match NAME (letters,
digits, ``._-``, no leading dot), so ``..``, ``/`` and absolute paths are refused when the study is read.
Every folder ablab writes for a study is then built by ``under``, which checks once more that it resolves
inside the output root.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from detector.config import ConfigError

NAME = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
_NAME = re.compile(NAME)


def check_name(field: str, value: str) -> str:
    """``value`` if it is a safe name, else a ConfigError that names the field and the value."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 128:
        raise ConfigError(f"{field}: {value!r} is not a valid name (letters, digits, '.', '_', '-'; "
                          f"no leading dot; at most 128 characters)")
    return value


def output_root(explicit: Optional[str] = None) -> Path:
    """--out-root > $ABLAB_OUTPUT_ROOT > ./outputs, except inside a Ray job whose working dir is a
    temporary copy: there ~/ablab-outputs, so results outlive the job."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get("ABLAB_OUTPUT_ROOT"):
        return Path(os.environ["ABLAB_OUTPUT_ROOT"]).expanduser().resolve()
    if os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID"):
        return (Path.home() / "ablab-outputs").resolve()
    return Path("outputs").resolve()


def under(root: Path, *parts: str) -> Path:
    """``root / parts...``, refused unless it resolves inside ``root`` (symlinks followed)."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"output path {root.joinpath(*parts)} resolves to {path}, outside the output root {root}")
    return path


def study_dir(study_id: str, profile: str, root: Optional[str] = None) -> Path:
    """The folder of one study profile's launch: ``<output root>/<study>/<profile>``."""
    return under(output_root(root), check_name("study", study_id), check_name("profile", profile))


def resolve_tracking_uri(study_id: str, tracking_uri: Optional[str] = None, out_root: Optional[str] = None) -> str:
    """--tracking-uri > $MLFLOW_TRACKING_URI > the local default: one SQLite file per study, beside its
    profiles' folders (profiles are told apart by a tag). Credentials in the URI move to the environment
    (adopt_credentials): the URI returned is safe to write and print."""
    default = f"sqlite:///{under(output_root(out_root), check_name('study', study_id), 'mlflow.db')}"
    return adopt_credentials(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default)


def adopt_credentials(uri: str) -> str:
    """``uri`` without the ``user:password@`` it may carry, which move to MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD of this process (MLflow's client reads them; an explicit variable wins). Every
    URI ablab writes or prints (launch.json, logs, tags, reports, job runtime envs) is the clean one."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    if parts.username:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
