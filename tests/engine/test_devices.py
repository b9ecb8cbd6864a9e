"""`--dtype auto` on a CPU: bf16 only where the flags say it is native and its matmuls measure faster here."""

from __future__ import annotations

import pytest
import torch

from lossgap.engine import devices


class _CpuInfo:
    """Stands in for Path("/proc/cpuinfo") with the given flags line."""

    flags = ""

    def __init__(self, path):
        assert str(path) == "/proc/cpuinfo"

    def read_text(self) -> str:
        return f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {self.flags}\n"


@pytest.mark.parametrize(("flags", "speedup", "expected"), [
    ("", None, torch.float32),  # bf16 emulated: not even measured
    ("avx512f avx512_bf16", 4.0, torch.bfloat16),
    ("amx_bf16 amx_tile", 9.0, torch.bfloat16),
    ("avx512f avx512_bf16", 0.02, torch.float32),  # oneDNN held to AVX2: a reference kernel
    ("avx512f avx512_bf16", 1.1, torch.float32),  # within the margin: not worth the precision
])
def test_auto_takes_bf16_where_flagged_and_measured_faster(monkeypatch, flags, speedup, expected):
    def measured() -> float:
        if speedup is None:
            raise AssertionError("measured on a CPU without native bf16")
        return speedup

    monkeypatch.setattr(_CpuInfo, "flags", flags)
    monkeypatch.setattr(devices, "Path", _CpuInfo)
    monkeypatch.setattr(devices, "bf16_matmul_speedup", measured)
    assert devices.resolve_dtype("auto", torch.device("cpu")) is expected
    assert devices.resolve_dtype("float32", torch.device("cpu")) is torch.float32


def test_the_measurement_is_a_ratio_of_times_taken_once_per_process():
    devices.bf16_matmul_speedup.cache_clear()
    first = devices.bf16_matmul_speedup()
    assert 0 < first < 1000 and devices.bf16_matmul_speedup() == first
