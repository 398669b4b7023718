"""``ablab doctor``: one screen on this machine's fitness for studies. Each line is a check and what it found;
nothing is started (no Ray cluster, no MLflow server) and nothing is written."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

OK, NOTE, PROBLEM = "ok", "note", "PROBLEM"

# What a paper profile reads in each data root (detector/data/datasets.py's layouts).
DATA_ROOTS = {
    "ABLAB_COCO_ROOT": ("COCO 2017", ["annotations/instances_train2017.json", "train2017",
                                      "annotations/instances_val2017.json", "val2017"]),
    "ABLAB_VOC_ROOT": ("PASCAL VOC (VOCdevkit)", ["VOC2007/ImageSets/Main/trainval.txt",
                                                  "VOC2007/ImageSets/Main/test.txt",
                                                  "VOC2012/ImageSets/Main/trainval.txt"]),
}


def _cpu(lines: list[tuple[str, str, str]]) -> None:
    import platform

    import torch

    from detector.precision import cpu_flags, hardware_summary, resolve_precision

    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    flags = cpu_flags(_cpuinfo())
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16") if f in flags]
    lines.append(("cpu", OK, f"{name}, {os.cpu_count()} cores; {' '.join(simd) or 'no AVX2'}"))
    cpu = torch.device("cpu")
    chosen = resolve_precision("auto", cpu, warn=lambda m: None).name
    lines.append(("precision auto (cpu)", OK if chosen == "bf16" else NOTE,
                  f"{chosen} ({hardware_summary(cpu)})" + ("" if chosen == "bf16" else
                                                          ": about 2x slower per step than native bf16")))


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _torch(lines: list[tuple[str, str, str]]) -> None:
    import torch

    from detector.precision import resolve_precision

    lines.append(("torch", OK, f"{torch.__version__}"))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        gpu = resolve_precision("auto", torch.device("cuda"), warn=lambda m: None).name
        lines.append(("cuda", OK, f"{torch.cuda.device_count()} GPU(s): {names}; precision auto: {gpu}"))
    else:
        lines.append(("cuda", NOTE, "no GPU: studies train on the CPU (a paper profile needs GPUs)"))


def _ray(lines: list[tuple[str, str, str]]) -> None:
    version = importlib.metadata.version("ray")
    address = os.environ.get("RAY_ADDRESS")
    lines.append(("ray", OK, f"{version}; " + (f"RAY_ADDRESS={address}: `ablab run` joins it" if address else
                                               "no RAY_ADDRESS: `ablab run` starts an embedded cluster on 127.0.0.1 "
                                               "with token auth")))
    if address:
        from .preflight import check_ray_address

        try:
            check_ray_address(address, "RAY_ADDRESS")
        except Exception as err:  # noqa: BLE001 - a report, not a failure of the command
            lines.append(("ray cluster", PROBLEM, " ".join(str(err).split())))
        mode = os.environ.get("RAY_AUTH_MODE", "")
        token = _token_source()
        state = OK if mode == "token" and token else NOTE
        lines.append(("ray token auth", state, f"RAY_AUTH_MODE={mode or '(unset)'}; token from {token or 'nowhere'}"
                      + ("" if state == OK else ": a cluster with token auth answers 401 without both")))


def _token_source() -> Optional[str]:
    """Where a Ray client would find its token, in Ray's order (never the token itself)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).is_file():
        return path
    return "~/.ray/auth_token" if (Path.home() / ".ray" / "auth_token").is_file() else None


def _mlflow(lines: list[tuple[str, str, str]]) -> None:
    from .paths import adopt_credentials, resolve_tracking_uri
    from .preflight import probe_tracking_server

    version = importlib.metadata.version("mlflow")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        default = resolve_tracking_uri("STUDY")
        lines.append(("mlflow", OK, f"{version}; no MLFLOW_TRACKING_URI: each study logs to {default}"))
        return
    uri = adopt_credentials(uri)  # shown without a password it may carry
    try:
        probe_tracking_server(uri, "MLFLOW_TRACKING_URI")
        lines.append(("mlflow", OK, f"{version}; MLFLOW_TRACKING_URI={uri} answers"))
    except Exception as err:  # noqa: BLE001 - a report, not a failure of the command
        lines.append(("mlflow", PROBLEM, f"{version}; {' '.join(str(err).split())}"))


def _browser(lines: list[tuple[str, str, str]]) -> None:
    found = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if Path(p).is_file()]
    if len(found) == 2:
        lines.append(("browser", OK, "chromium + chromedriver: the report's browser tests can run"))
    else:
        lines.append(("browser", NOTE, "no Debian chromium / chromium-driver: reports still build; the browser "
                                       "tests need them (`bash tests/run` installs them)"))


def _data(lines: list[tuple[str, str, str]]) -> None:
    for var, (what, needed) in DATA_ROOTS.items():
        root = os.environ.get(var)
        if not root:
            lines.append((var, NOTE, f"unset: the paper profiles that read {what} cannot run (smoke profiles use "
                                     f"the synthetic set)"))
            continue
        missing = [p for p in needed if not (Path(root) / p).exists()]
        lines.append((var, PROBLEM if missing else OK,
                      f"{root}: " + (f"missing {', '.join(missing)}" if missing else f"holds {what}'s splits")))


def _disk(lines: list[tuple[str, str, str]]) -> None:
    from .paths import output_root

    root = Path(output_root())
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free / 2**30
    lines.append(("outputs", OK if free > 5 else NOTE, f"{root}: {free:.0f} GiB free"
                  + ("" if free > 5 else ": a smoke study needs ~1 GiB, a paper one far more")))


CHECKS: list[Callable[[list[tuple[str, str, str]]], None]] = [_cpu, _torch, _ray, _mlflow, _browser, _data, _disk]


def doctor(print_line: Optional[Callable[[str], None]] = None) -> int:
    """Print the checks; returns 1 if one found a problem that stops studies from running, else 0."""
    print_line = print_line or print
    lines: list[tuple[str, str, str]] = []
    for check in CHECKS:
        try:
            check(lines)
        except Exception as err:  # noqa: BLE001 - one broken check must not hide the others
            lines.append((check.__name__.strip("_"), PROBLEM, f"{type(err).__name__}: {err}"))
    width = max(len(name) for name, _, _ in lines)
    for name, state, text in lines:
        print_line(f"{name:<{width}}  {state:<7}  {text}")
    return 1 if any(state == PROBLEM for _, state, _ in lines) else 0
