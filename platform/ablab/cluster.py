"""The Ray cluster a study runs on: the one at ``--address`` / $RAY_ADDRESS, or an embedded local one started on
127.0.0.1 with token authentication, whose temp folder (token, sockets, Ray's logs) goes at exit once the study
ended cleanly."""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .trial import set_train_env


def start_ray(address: Optional[str]) -> str:
    """Join ``address`` / $RAY_ADDRESS, else start an embedded local cluster (never a stale one) on 127.0.0.1
    with token authentication. Call it before anything in the process imports Ray: Ray's core reads its
    settings (auth mode, trial.TRAIN_ENV) from the environment once."""
    # MLflow is a study's logger: Tune adds none of its own (run_study keeps its CSV/JSON files); its
    # TensorBoard logger alone would import tensorboardX and torch into the driver, ~2.5 s.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Inside a Ray job the variables may already come from the job's runtime env, and Ray refuses a driver
    # runtime env that sets them again; the embedded cluster inherits this process's environment.
    set_now = set_train_env()
    runtime_env = {"env_vars": set_now} if set_now else None
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return address
    temp_dir = _embedded_cluster_auth()
    # A single-machine Ray: its node IP is 127.0.0.1 and every server (GCS, raylet, object manager, workers,
    # dashboard agent, runtime-env agent) binds it. Without this Ray swaps 127.0.0.1 for the machine's
    # address and its gRPC servers listen on all interfaces. (The name is Ray's: on Windows and macOS it is
    # the default.)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # One local node is never preempted: skip the watcher actor Train starts per trial (one process less).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray

    # The dashboard serves the state API, which Train V2 needs to release a finished trial's placement group
    # (else the third trial on 2 CPUs waits forever).
    ray.init(address="local", _node_ip_address="127.0.0.1", _temp_dir=str(temp_dir), include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=True)
    return "local"


@dataclass
class _EmbeddedTemp:
    """The embedded cluster's Ray temp folder (its token, sockets and Ray's session logs, ~2 MB). At exit the
    token goes, and the folder too once a study ended cleanly (``clean``); after a failure, an interruption or a
    crash Ray's logs stay there for a look."""
    path: Optional[Path] = None
    clean: bool = False

    def leave(self) -> None:
        (self.path / "auth_token").unlink(missing_ok=True)
        if self.clean:
            shutil.rmtree(self.path, ignore_errors=True)  # a Ray process still exiting may recreate a file


ray_temp = _EmbeddedTemp()
"""This process's embedded cluster's folder (its path once started; ``clean`` decides what goes at exit)."""


def _embedded_cluster_auth() -> Path:
    """A Ray temp folder for this launch (0700) holding a fresh token, with this process's environment set to
    use it: token authentication on whatever RAY_AUTH_MODE said, and never ~/.ray, so a later plain
    `ray start` is not changed by it. The token file goes when the process exits (_EmbeddedTemp)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ablab-ray-", dir="/tmp"))  # AF_UNIX socket paths < 108 bytes
    token = temp_dir / "auth_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    ray_temp.path = temp_dir
    atexit.register(ray_temp.leave)  # runs after Ray's own exit hook (registered later): its processes are gone
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    return temp_dir
