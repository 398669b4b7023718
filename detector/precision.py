"""The numeric precision a run trains and evaluates in, chosen from the hardware when the config says ``auto``.

bf16 autocast (+ channels_last) is ~2x faster than fp32 on a CPU with native bf16 (avx512_bf16 / amx_bf16 on
x86, FEAT_BF16 on arm64), but emulated, and many times slower, on one without: the choice cannot be
hard-coded in a config that must run on any machine.

    auto  CUDA: bf16 where the GPU supports it, else fp16 with a GradScaler.
          CPU:  bf16 where the CPU has native bf16, else fp32.

``ABLAB_NATIVE_BF16=0`` makes ``auto`` decide as on hardware without native bf16 (``1``: as on hardware
with it), so both outcomes can be tested on one machine. It is read where training runs.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional

import torch

NATIVE_BF16_ENV = "ABLAB_NATIVE_BF16"
# One training step of the smoke model (ResNet18, GN head width 64, batch 8 at 128 px, 2 threads) on a 2-core
# AVX2 CPU: fp32 0.441 s, bf16 4.644 s.
EMULATED_BF16_SLOWDOWN = 10.5
_X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class PrecisionWarning(UserWarning):
    """A requested precision that this hardware runs slowly or not at all."""


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags in /proc/cpuinfo text: x86's ``flags`` lines and arm64's ``Features`` lines."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether the CPU computes bf16 in hardware: x86 avx512_bf16 or amx_bf16, arm64 bf16 (FEAT_BF16).

    ``cpuinfo`` is /proc/cpuinfo's text (read when not given). Where there is none (macOS, Windows) the
    answer is False: fp32 is never the slow choice. ``ABLAB_NATIVE_BF16`` overrides the reading.
    """
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = cpu_flags(cpuinfo)
    return bool(flags & _X86_BF16_FLAGS) or "bf16" in flags


def cuda_has_native_bf16() -> bool:
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return torch.cuda.is_bf16_supported(including_emulation=False)


def hardware_summary(device: torch.device) -> str:
    """What the precision choice was made on, e.g. ``cpu AVX512 (native bf16)`` or ``cuda NVIDIA H100 (native bf16)``."""
    forced = os.environ.get(NATIVE_BF16_ENV) in ("0", "1")
    if device.type == "cuda":
        name, native = torch.cuda.get_device_name(device), cuda_has_native_bf16()
    else:
        name, native = torch.backends.cpu.get_cpu_capability(), cpu_has_native_bf16()
    how = f"{'native' if native else 'no native'} bf16{f', forced by {NATIVE_BF16_ENV}' if forced else ''}"
    return f"{device.type} {name} ({how})"


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what autocast runs in, whether tensors go channels_last, whether a scaler is needed."""

    name: str
    """fp32, bf16 or fp16."""
    device_type: str

    @property
    def channels_last(self) -> bool:
        # oneDNN's bf16 convolutions and the GPU's tensor cores both want NHWC.
        return self.name != "fp32"

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self) -> ContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.name == "bf16" else torch.float16)


def resolve_precision(requested: str, device: torch.device,
                      warn: Callable[[str], None] = lambda m: warnings.warn(m, PrecisionWarning, stacklevel=3)
                      ) -> Precision:
    """``auto`` -> the fastest safe precision on ``device``; an explicit one is kept where it can run at all
    (fp16 on a CPU becomes fp32), with a warning where it is slow."""
    cuda = device.type == "cuda"
    if requested == "auto":
        native = cuda_has_native_bf16() if cuda else cpu_has_native_bf16()
        return Precision("bf16" if native else ("fp16" if cuda else "fp32"), device.type)
    if requested == "fp16" and not cuda:
        warn("train.precision fp16 needs a GPU: running fp32 on the CPU (precision: auto picks for you)")
        return Precision("fp32", device.type)
    if requested == "bf16" and not (cuda_has_native_bf16() if cuda else cpu_has_native_bf16()):
        if cuda:
            warn("train.precision bf16: this GPU has no native bf16, it is emulated and slow "
                 "(precision: auto picks fp16 with a GradScaler here)")
        else:
            warn(f"train.precision bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 "
                 f"(no avx512_bf16 / amx_bf16), so it is emulated: a training step was measured "
                 f"{EMULATED_BF16_SLOWDOWN:g}x slower than fp32 on such a CPU (precision: auto picks fp32 here)")
    return Precision(requested, device.type)
