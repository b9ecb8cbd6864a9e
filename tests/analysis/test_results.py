"""results.json is a pure function of the stored files: `lossgap report` on a comparison written by an earlier
version of lossgap (tests/fixtures/stored_comparison: the shipped demo pair on ten short documents, seed matrix,
written before the refactor of issue 14) rebuilds its results.json byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from lossgap.analysis.findings import key_findings
from lossgap.cli import main
from lossgap.matrix import single_configuration
from tests.results_example import make_results

STORED = Path(__file__).parents[1] / "fixtures" / "stored_comparison"


def test_report_rebuilds_a_stored_results_json_byte_for_byte(tmp_path, capsys):
    folder = tmp_path / "stored"
    shutil.copytree(STORED, folder)
    expected = (STORED / "results.json").read_bytes()
    assert main(["report", str(folder)]) == 0
    capsys.readouterr()
    assert (folder / "results.json").read_bytes() == expected
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()


SEED_COMMENT = ("For the seed's own table: +0.144 nats is +15.5% and +0.184 is +20.2%, so its '5-15 %' does not "
                "follow from it.")


def test_the_seeds_own_figures_are_discussed_only_when_its_matrix_ran():
    seed = make_results()
    seed["configurations"][4]["models"]["base"]["mean_nll"] = 2.52  # packing done right: close to single-document
    findings = key_findings(seed)
    (relative,) = [f for f in findings if f.startswith("Relative perplexity change")]
    assert relative == ("Relative perplexity change is exp(diff) - 1, not diff: next-single-causal: +0.1440 nats = "
                        "+15.5%; next-batch-block: +0.1840 nats = +20.2%; next-batch-causal: +0.1840 nats = +20.2%. "
                        + SEED_COMMENT)
    (packing,) = [f for f in findings if f.startswith("On the same documents")]
    assert packing.endswith(" Packing with a block mask barely moves the loss, so it cannot explain the seed's "
                            "0.54-nat gap between its single-document (2.514) and batch (3.051) rows: those rows "
                            "scored different text.")

    row = {**seed["configurations"][4], **single_configuration(1, "packed", "block").to_dict()}
    single = {**seed, "configurations": [row], "main_configuration": row["key"], "leakage": []}
    findings = key_findings(single)
    assert "Relative perplexity change is exp(diff) - 1, not diff: k1-packed-block: +0.1840 nats = +20.2%." in findings
    assert not any("seed" in f for f in findings), findings
