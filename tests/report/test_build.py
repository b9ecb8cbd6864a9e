"""The report: the seed's table with the right numbers, CSVs that round-trip, real PNGs, one self-contained HTML
page that a browser renders, and the same bytes for the same results.

The results dict is tests/results_example.py's (the seed's own losses, two models, the six seed configurations, None
values and one leakage pair), so these tests need no model and no comparison run.
"""

from __future__ import annotations

import base64
import copy
import csv
import json
import math
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from lossgap.formats import columns
from lossgap.matrix import SEED_MATRIX
from lossgap.report.build import format_seed_table, write_report
from lossgap.report.render import (
    Interval,
    Position,
    Table,
    Text,
    change,
    count,
    html_table,
    loss,
    md_table,
    pvalue,
    share,
    signed,
)
from tests.helpers import missing_input
from tests.results_example import BUCKETS, make_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("per_domain_difference.png", "nll_by_position.png", "leakage_by_position.png", "doc_difference_histogram.png")
CSVS = ("seed_table.csv", "statistics.csv", "per_domain.csv", "leakage.csv", "position_profile.csv", "diagnostics.csv")
@pytest.fixture
def results() -> dict:
    return make_results()


@pytest.fixture
def report_dir(tmp_path, results) -> Path:
    out = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN, font or layout warnings while drawing
        written = write_report(out, results)
    assert all(p.is_file() and p.parent == out for p in written)
    assert {p.name for p in written} >= {"report.md", "report.html", *CSVS, *PLOTS}
    return out


def test_seed_table_has_the_seed_layout_and_numbers(report_dir):
    md = (report_dir / "report.md").read_text()
    header = ("| Test Setup | Attention Mask | Base Loss | Instruct Loss | Difference | Relative perplexity "
              "| What it computes | Flag |")
    assert header in md
    assert "| **SHIFTED LABELS (next-token prediction)** |" in md
    assert "| **NO SHIFTING (labels=input_ids)** |" in md
    flag = " | near-uniform (base, instruct) |"
    expected = [
        "| Single document | Default causal | 10.0550 | 9.7670 | **-0.2880** | -25.0% | predicts token t+2",
        "| Batch | Proper 4D block | 10.1800 | 10.3030 | **+0.1230** | +13.1% | predicts token t+2",
        "| Batch | Default causal | 10.1780 | 10.3010 | **+0.1230** | +13.1% | predicts token t+2",
        "| Single document | Default causal | 2.5140 | 2.6580 | **+0.1440** | +15.5% | next-token loss; each document",
        "| Batch | Proper 4D block | 3.0510 | 3.2350 | **+0.1840** | +20.2% | next-token loss; packed rows, documents",
        "| Batch | Default causal | 3.0500 | 3.2340 | **+0.1840** | +20.2% | next-token loss; packed rows, context",
    ]
    lines = md.splitlines()
    for i, start in enumerate(expected):
        (line,) = [x for x in lines if x.startswith(start)]
        assert line.endswith(flag) == (i < 3), line  # only the shifted rows are near ln(vocab)
    # group headings come before their rows, in the seed's order
    assert lines.index("| **SHIFTED LABELS (next-token prediction)** |") < lines.index(
        next(x for x in lines if x.startswith(expected[0]))) < lines.index("| **NO SHIFTING (labels=input_ids)** |")
    assert format_seed_table(make_results()).splitlines()[0] == header


def test_other_sections_and_missing_values(report_dir):
    md = (report_dir / "report.md").read_text()
    for title in ("## Findings", "## The seed's table, recomputed", "## Statistics", "## By domain",
                  "## Leakage by position", "## NLL by position", "## Tokenizers", "## Diagnostics", "## Settings"):
        assert title in md
    assert "- Relative perplexity change is exp(diff) - 1: +0.144 nats is +15.5%." in md
    # statistics: diff, CI, relative perplexity with CI, doc-weighted diff, share worse, p, counts
    assert ("| next-single-causal | instruct | +0.1440 | +0.0940 to +0.2040 | +15.5% | +9.9% to +22.6% | +0.1296 "
            "| 62.5% | 0.012 | 40 | 9,000 |") in md
    assert "| next-batch-causal | instruct | +0.1840 |" in md and "| 62.5% | n/a | 40 | 9,000 |" in md
    # by domain on the main configuration; a domain without documents prints n/a
    assert "| instruct | Github | +0.2040 | +0.1540 to +0.2640 | +22.6% | 25 | 6,000 |" in md
    assert "| instruct | Empty | n/a | n/a | n/a | 0 | 0 |" in md
    # leakage per model and position; NLL by position with the difference column
    assert "### base: next-batch-causal - next-batch-block (next token)" in md
    assert "| 1 | 40 | 10.0% | 3.0000 | 3.5000 | +0.5000 | 0.7500 | 16.7% |" in md
    assert "| Position | Tokens | base mean NLL | instruct mean NLL | instruct - base |" in md
    assert "| 1 | 40 | 3.5000 | 3.5500 | +0.0500 |" in md
    # diagnostics: Markdown-escaped pipe and HTML; settings
    assert "mask probe passed \\| &lt;script&gt;alert('x')&lt;/script&gt; &amp; friends" in md
    assert "| Corpus | /data/pile/val.jsonl.zst |" in md and "| Sequence length | 8,192 |" in md
    assert "nan" not in md.lower().replace("n/a", "")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _same(text: str, value) -> bool:
    if value is None:
        return text == ""
    if isinstance(value, bool):
        return text == str(value)
    if isinstance(value, int | float):
        return float(text) == value  # full precision: exact round trip
    return text == str(value)


def test_csvs_round_trip_full_precision(report_dir, results):
    seed = _read_csv(report_dir / "seed_table.csv")
    assert [r["configuration"] for r in seed] == [c.key for c in SEED_MATRIX]
    for row, conf in zip(seed, results["configurations"], strict=True):
        o = conf["comparisons"]["instruct"]["overall"]
        assert _same(row["base_mean_nll"], conf["models"]["base"]["mean_nll"])
        assert _same(row["instruct_mean_nll"], conf["models"]["instruct"]["mean_nll"])
        assert _same(row["instruct_diff"], o["diff"])
        assert _same(row["instruct_relative_perplexity_change"], o["relative_perplexity_change"])
        assert _same(row["base_near_uniform"], conf["models"]["base"]["near_uniform"])
    stats = _read_csv(report_dir / "statistics.csv")
    assert len(stats) == 6
    for row, conf in zip(stats, results["configurations"], strict=True):
        o = conf["comparisons"]["instruct"]["overall"]
        for key in ("diff", "ci_low", "ci_high", "doc_weighted_diff", "share_docs_worse", "wilcoxon_p", "n_tokens"):
            assert _same(row[key], o[key]), key
        assert _same(row["ci_relative_perplexity_change_low"], o["ci_relative_perplexity_change"][0])
    domains = _read_csv(report_dir / "per_domain.csv")
    main = next(c for c in results["configurations"] if c["key"] == "next-batch-block")
    assert [(r["model"], r["domain"]) for r in domains] == [("instruct", d) for d in ("Github", "Pile-CC", "Empty")]
    for row in domains:
        d = main["comparisons"]["instruct"]["per_domain"][row["domain"]]
        assert _same(row["diff"], d["diff"]) and _same(row["ci_high"], d["ci_high"])
    leak = _read_csv(report_dir / "leakage.csv")
    assert len(leak) == 2 * (len(BUCKETS) + 1)
    for row in leak:
        b = next(x for x in results["leakage"][0]["models"][row["model"]] if x["bucket"] == row["bucket"])
        assert all(_same(row[k], b[k]) for k in ("n_tokens", "share_tokens", "mean_block", "mean_causal",
                                                  "mean_diff", "mean_abs_diff"))
    profile = _read_csv(report_dir / "position_profile.csv")
    assert len(profile) == 2 * len(BUCKETS)
    for row in profile:
        b = next(x for x in results["position_profile"]["models"][row["model"]] if x["bucket"] == row["bucket"])
        assert _same(row["mean_nll"], b["mean_nll"]) and _same(row["n_tokens"], b["n_tokens"])
    diags = _read_csv(report_dir / "diagnostics.csv")
    assert diags == [{k: d[k] for k in ("level", "code", "where", "message")} for d in results["diagnostics"]]


def test_plots_are_real_pngs(report_dir):
    for name in PLOTS:
        data = (report_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, name  # axes, labels and data, not an empty canvas
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 600 and height >= 250, name


def test_html_is_self_contained_and_has_every_table(report_dir):
    page = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # no external resources: every src/href is a data: URI or an in-page anchor
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page  # the diagnostic's <script> text is escaped
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in page
    # every Markdown table is an HTML table, with the same headers
    md_tables = [lines for lines in re.findall(r"((?:^\|.*\|\n)+)", md, flags=re.M)]
    assert page.count("<table>") == len(md_tables) >= 9
    for table in md_tables:
        headers = [h.strip().replace("\\|", "|") for h in table.splitlines()[0].strip("|").split(" | ")]
        assert "<thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead>" in page, headers
    # the four plots, embedded byte for byte, with alt text
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)">', page)
    assert len(images) == 4 and all(alt for _, alt in images)
    embedded = {base64.b64decode(data) for data, _ in images}
    assert embedded == {(report_dir / name).read_bytes() for name in PLOTS}
    assert "<strong>+0.1440</strong>" in page and "+15.5%" in page


def test_report_is_deterministic_and_depends_only_on_results_json(tmp_path, results):
    a, b = write_report(tmp_path / "a", results), write_report(tmp_path / "b", copy.deepcopy(results))
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    # NaN in memory (what build_results returns) reads as null in results.json: the report is the same
    with_nan = copy.deepcopy(results)
    with_nan["configurations"][5]["comparisons"]["instruct"]["overall"]["wilcoxon_p"] = float("nan")
    reread = json.loads(json.dumps(results))
    write_report(tmp_path / "c", with_nan)
    write_report(tmp_path / "d", reread)
    for name in ("report.md", "report.html", *CSVS):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_empty_plots_are_skipped_cleanly(tmp_path, results):
    write_report(tmp_path, results)  # a previous report with every plot
    results["leakage"] = []
    results["doc_difference_histogram"]["models"] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = {p.name for p in write_report(tmp_path, results)}
    assert "leakage_by_position.png" not in written and "doc_difference_histogram.png" not in written
    assert not (tmp_path / "leakage_by_position.png").exists()  # no stale figure left beside the report
    assert {"per_domain_difference.png", "nll_by_position.png"} <= written
    md = (tmp_path / "report.md").read_text()
    assert "leakage was not measured" in md and "leakage_by_position.png" not in md
    assert (tmp_path / "report.html").read_text().count("<img ") == 2


def test_more_models_get_their_own_columns(tmp_path):
    write_report(tmp_path, make_results(extra_model=True))
    md = (tmp_path / "report.md").read_text()
    assert ("| Test Setup | Attention Mask | Base Loss | Instruct Loss | chat Loss | Difference | Difference (chat) "
            "| Relative perplexity | Relative perplexity (chat) | What it computes | Flag |") in md
    assert "| Single document | Default causal | 2.5140 | 2.6580 | 2.8020 | **+0.1440** | **+0.2880** | +15.5% " \
           "| +33.4% |" in md
    assert "near-uniform (base, instruct, chat)" in md
    assert {r["model"] for r in _read_csv(tmp_path / "statistics.csv")} == {"instruct", "chat"}


def test_bits_per_byte_mode_says_so(tmp_path, results):
    results["mode"] = "bits_per_byte"
    for conf in results["configurations"]:
        for cmp in conf["comparisons"].values():
            for stats in [cmp["overall"], *cmp["per_domain"].values()]:
                stats["unit"] = "bits/byte"
                del stats["relative_perplexity_change"], stats["ci_relative_perplexity_change"]
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "| Test Setup | Attention Mask | Base bits/byte | Instruct bits/byte | Difference | What it computes |" in md
    assert "bits per byte instead of losses" in md
    base_bpb = results["configurations"][3]["models"]["base"]["bits_per_byte"]
    assert f"| Single document | Default causal | {base_bpb:.4f} |" in md
    assert "base_bits_per_byte" in _read_csv(tmp_path / "seed_table.csv")[0]


def test_cells_keep_their_values_and_align_by_kind():
    negative, missing, words = signed(-0.288), loss(None), Text("5-8 documents")
    assert (negative.value, negative.display, missing.display, words.display) == (-0.288, "-0.2880", "n/a",
                                                                                 "5-8 documents")
    assert [c.display for c in (change(0.1549), share(0.25), count(9000), pvalue(6.7e-10), signed(-0.0))] == [
        "+15.5%", "25.0%", "9,000", "6.7e-10", "+0.0000"]
    assert Interval(-0.1, 0.2).display == "-0.1000 to +0.2000" and Interval(0.1, float("nan")).display == "n/a"
    assert Interval(0.1, 0.2, change).display == "+10.0% to +20.0%"
    # alignment comes from the kind, not from how the text looks: "1" as words stays left, a bucket aligns right
    assert [c.numeric for c in (negative, missing, Interval(None, None), pvalue(1e-9), Position(">1024"))] == [True] * 5
    assert not Text("1").numeric and not words.numeric
    table = Table(["Diff", "Loss", "Note", "CI"], [[negative, missing, words, Interval(None, 1.0)], "group"], [],
                  strong=frozenset({0, 1}))
    assert md_table(table).splitlines()[2:] == ["| **-0.2880** | n/a | 5-8 documents | n/a |", "| **group** |"]
    assert ('<tr><td class="num"><strong>-0.2880</strong></td><td class="num">n/a</td><td>5-8 documents</td>'
            '<td class="num">n/a</td></tr>') in html_table(table)  # a missing number is not bold
    assert '<tr class="group"><th colspan="4">group</th></tr>' in html_table(table)


def test_an_interval_over_one_document_is_not_shown(tmp_path, results):
    github = results["configurations"][4]["comparisons"]["instruct"]["per_domain"]["Github"]
    github.update(n_documents=1, n_tokens=300, ci_low=github["diff"], ci_high=github["diff"])
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "| instruct | Github | +0.2040 | n/a (1 document) | +22.6% | 1 | 300 |" in md
    assert "| instruct | Pile-CC | +0.1540 | +0.1040 to +0.2140 | +16.6% | 15 | 3,000 |" in md
    assert '<td class="num">n/a (1 document)</td>' in (tmp_path / "report.html").read_text()
    (row,) = [r for r in _read_csv(tmp_path / "per_domain.csv") if r["domain"] == "Github"]
    assert _same(row["ci_low"], github["diff"]) and _same(row["ci_high"], github["diff"])  # the numbers stay


def test_per_token_statistics_follow_the_column_declarations(tmp_path, results, monkeypatch):
    import pyarrow as pa

    entropy = columns.Column("entropy", pa.float32(), "nats", "entropy of the predicted distribution", "model",
                             per_document="entropy_sum", summary=columns.MEAN)
    monkeypatch.setattr(columns, "TOKEN_COLUMNS", (*columns.TOKEN_COLUMNS, entropy))
    write_report(tmp_path / "absent", results)  # declared, but not in these results: no table
    assert "Per-token statistics" not in (tmp_path / "absent" / "report.md").read_text()
    assert not (tmp_path / "absent" / "token_statistics.csv").exists()
    for k, conf in enumerate(results["configurations"]):
        for j, summary in enumerate(conf["models"].values()):
            summary[entropy.summary_key] = 2.0 + 0.1 * k + 0.01 * j
    written = {p.name for p in write_report(tmp_path / "present", results)}
    md = (tmp_path / "present" / "report.md").read_text()
    assert "## Per-token statistics" in md and "entropy: entropy of the predicted distribution (nats)" in md
    assert "| Configuration | Model | Mean entropy (nats) |" in md
    assert "| next-batch-block | instruct | 2.4100 |" in md
    assert '<td>next-batch-block</td><td>instruct</td><td class="num">2.4100</td>' in (
        tmp_path / "present" / "report.html").read_text()
    assert "token_statistics.csv" in written
    rows = _read_csv(tmp_path / "present" / "token_statistics.csv")
    assert len(rows) == 2 * len(SEED_MATRIX)
    for row in rows:
        conf = next(c for c in results["configurations"] if c["key"] == row["configuration"])
        assert _same(row["mean_entropy"], conf["models"][row["model"]]["mean_entropy"])


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    if shutil.which("chromium") is None:
        missing_input("needs Debian's chromium (apt-get install chromium)")
    from matplotlib.image import imread

    page = report_dir / "report.html"
    shot = tmp_path / "shot.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2400"]
    subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile-a'}", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile-b'}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<table>") == page.read_text().count("<table>") >= 9
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == 4
    assert "The seed's table, recomputed" in dom

    pixels = imread(shot)[..., :3]  # floats in [0, 1]
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 0.05  # not a single colour
    non_white = (pixels < 0.95).any(axis=-1).mean()
    assert non_white > 0.05, non_white  # text, table shading and plots, not a blank page
    colourful = (pixels.max(axis=-1) - pixels.min(axis=-1) > 0.25).mean()
    assert colourful > 0.005, colourful  # the plots' coloured lines, bars and markers are drawn


def test_an_overflowing_relative_perplexity_reads_inf(tmp_path, results):
    """exp(diff) - 1 beyond the largest float is inf in memory and "inf" in strict JSON: the report prints +inf%,
    says it overflowed, and is the same from either."""
    from lossgap.formats.schema import INF, clean

    main = next(c for c in results["configurations"] if c["key"] == "next-batch-block")
    o = main["comparisons"]["instruct"]["overall"]
    o.update(diff=750.0, ci_low=700.0, ci_high=800.0, relative_perplexity_change=math.inf,
             ci_relative_perplexity_change=[math.expm1(700.0), math.inf])
    write_report(tmp_path / "memory", results)
    stored = json.loads(json.dumps(clean(results), allow_nan=False))
    assert stored["configurations"][4]["comparisons"]["instruct"]["overall"]["relative_perplexity_change"] == INF
    write_report(tmp_path / "json", stored)
    for name in ("report.md", "report.html", *CSVS):
        assert (tmp_path / "memory" / name).read_bytes() == (tmp_path / "json" / name).read_bytes(), name
    md = (tmp_path / "memory" / "report.md").read_text()
    assert "| next-batch-block | instruct | +750.0000 | +700.0000 to +800.0000 | +inf% | " in md
    assert f"{math.expm1(700.0) * 100:+.1f}% to +inf% |" in md
    assert "A relative perplexity of +inf% overflowed" in md
    (row,) = [r for r in _read_csv(tmp_path / "json" / "statistics.csv") if r["configuration"] == "next-batch-block"]
    assert row["relative_perplexity_change"] == "inf" and float(row["ci_relative_perplexity_change_low"]) > 1e300
    write_report(tmp_path / "finite", make_results())
    assert "overflowed" not in (tmp_path / "finite" / "report.md").read_text()
