"""results.json is a pure function of the stored files: `lossgap report` on a comparison written by an earlier
version of lossgap (tests/data/stored_comparison: the shipped demo pair on ten short documents, seed matrix,
written before the refactor of issue 14) rebuilds its results.json byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from lossgap.cli import main

STORED = Path(__file__).parent / "data" / "stored_comparison"


def test_report_rebuilds_a_stored_results_json_byte_for_byte(tmp_path, capsys):
    folder = tmp_path / "stored"
    shutil.copytree(STORED, folder)
    expected = (STORED / "results.json").read_bytes()
    assert main(["report", str(folder)]) == 0
    capsys.readouterr()
    assert (folder / "results.json").read_bytes() == expected
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
