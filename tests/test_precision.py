"""precision: auto picks bf16 only on hardware that computes it natively, and a run keeps its choice."""
import warnings

import pytest
import torch

from conftest import tiny_config
from detector.config import parse_config
from detector.engine import train
from detector.precision import (NATIVE_BF16_ENV, PrecisionWarning, cpu_flags, cpu_has_native_bf16,
                                resolve_precision)

# Trimmed /proc/cpuinfo of three real machines.
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile
"""
AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
"""
GRAVITON3 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve bf16 i8mm
CPU implementer\t: 0x41
"""
CPU = torch.device("cpu")


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)


def test_cpu_flags_reads_x86_and_arm_lines():
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert "bf16" in cpu_flags(GRAVITON3) and "asimd" in cpu_flags(GRAVITON3)
    assert "GenuineIntel" not in cpu_flags(SAPPHIRE_RAPIDS)  # only the flag lines


@pytest.mark.parametrize("cpuinfo, native", [(SAPPHIRE_RAPIDS, True), (AVX2_ONLY, False), (GRAVITON3, True),
                                             ("flags : avx512f avx512bw avx512_vnni", False), ("", False)])
def test_native_bf16_from_cpu_flags(cpuinfo, native, no_override):
    assert cpu_has_native_bf16(cpuinfo) is native


def test_environment_forces_the_decision(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) is False
    assert resolve_precision("auto", CPU).name == "fp32"
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert cpu_has_native_bf16(AVX2_ONLY) is True
    p = resolve_precision("auto", CPU)
    assert p.name == "bf16" and p.channels_last and not p.needs_grad_scaler


def test_explicit_bf16_on_a_cpu_without_it_runs_with_one_warning(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    with pytest.warns(PrecisionWarning, match=r"emulated: a training step was measured 10.5x slower") as caught:
        p = resolve_precision("bf16", CPU)
    assert p.name == "bf16" and len(caught) == 1
    with p.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_fp16_on_a_cpu_runs_fp32_and_says_so():
    with pytest.warns(PrecisionWarning, match="needs a GPU"):
        assert resolve_precision("fp16", CPU).name == "fp32"


def test_fp32_and_native_bf16_do_not_warn(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("fp32", CPU).autocast() is not None
        assert resolve_precision("bf16", CPU).name == "bf16"


def test_a_run_keeps_its_resolved_precision_on_resume(synthetic_root, monkeypatch, tmp_path):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    cfg = parse_config(tiny_config(synthetic_root, data={"max_images": 4}, train={"epochs": 1}))
    state = train(cfg, log=lambda m: None)
    assert state.precision.name == "fp32" and "no native bf16, forced by ABLAB_NATIVE_BF16" in state.hardware
    torch.save(state.checkpoint(), tmp_path / "state.pt")
    ckpt = torch.load(tmp_path / "state.pt", weights_only=True)  # tensors and numbers only
    assert ckpt["precision"] == "fp32"
    # The same trial resumed on a machine where auto would pick bf16 goes on in fp32.
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    more = parse_config(tiny_config(synthetic_root, data={"max_images": 4}, train={"epochs": 2}))
    resumed = train(more, checkpoint=ckpt, log=lambda m: None)
    assert resumed.epoch == 2 and resumed.precision.name == "fp32"
    assert next(resumed.model.parameters()).is_contiguous()  # fp32 stays NCHW
