"""The allocator setting keeps a burst of freed activation-sized blocks for the next one: page faults measured in
fresh processes (mallopt is process-wide and cannot be undone), each way."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lossgap.config import ModelConfig
from lossgap.engine.allocator import _glibc, keep_freed_memory
from lossgap.engine.model import load_model

BURSTS = """
import resource, sys
import numpy as np
from lossgap.engine.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def burst():  # ten 4 MiB blocks live at once, then freed together: what a layer's activations do
    blocks = [np.ones(1 << 20, dtype=np.float32) for _ in range(10)]
    del blocks
burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    burst()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", BURSTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt")
def test_kept_freed_memory_is_not_faulted_in_again():
    default, kept = _faults("default"), _faults("kept")
    pages = 20 * 10 * (4 << 20) // 4096  # every page of every burst
    assert default > pages // 4  # glibc's default hands each burst back and faults (most of) the next one in
    assert kept < pages // 100


def test_a_model_loaded_on_the_cpu_sets_it_once(llama_dir):
    keep_freed_memory.cache_clear()  # the process's setting stays; only the memo of having made it goes
    load_model(ModelConfig(str(llama_dir), device="cpu", dtype="float32"), quiet=True)
    assert keep_freed_memory.cache_info().currsize == 1
    assert keep_freed_memory() is (_glibc() is not None)  # what the load's call got: glibc took both thresholds
