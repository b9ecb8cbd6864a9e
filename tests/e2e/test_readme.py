"""README's Python examples run as written, in order, in a fresh folder, and print what they promise."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_api_examples():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3 and "score(cfg)" in blocks[0] and "compare(" in "".join(blocks)


@pytest.mark.slow
def test_readme_python_examples_run(tmp_path):
    script = "\n\n".join(python_blocks(README.read_text()))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    mean_nll, domains = lines[0].split(" ", 1)
    assert 0 < float(mean_nll) < math.log(4096) and "Github" in domains
    k1, k2 = map(float, lines[1].split())
    assert float(mean_nll) == k1 < k2  # the same configuration gives the same number; two tokens ahead is harder
    assert lines[2].startswith("On next-token loss; packed rows")
