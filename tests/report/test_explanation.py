"""The section "Where the difference comes from" shows what results.json's `explanation` holds: special tokens by name
and set apart in the token view, a tooltip that says which KL it gives, tables whose titles and columns say what
they hold, and the chat format's change per domain, the same in report.md and report.html.

The explanation below is written by hand (the demo's numbers, rounded), so these tests need no model."""

from __future__ import annotations

import copy
import csv
import html
import re

import pytest

from lossgap.report.build import write_report
from lossgap.report.explanation import token_view_html
from lossgap.report.explanation_tables import calibration_table, chat_domain_table, chat_table, distribution_table
from tests.results_example import make_results


def cell(text: str, top_b: str, top_o: str, special: bool = False) -> list:
    """A token view row: [text, nll_b, nll_o, top1_b, top1_o, kl, highlighted, special]."""
    return [text, 1.0, 3.5, top_b, top_o, 0.75, True, special]


VIEW = {"other_worse": [{"doc_id": 25, "first_pos": 1, "last_pos": 5, "delta_sum": 12.5, "tokens": [
    cell("Answer", "Answer", "<|im_end|>"),
    cell("", "<0xE2><0x80>", " the"),  # the first bytes of a curly quote: shown on the next token
    cell("“", "<0x9C>", "\n"),
    cell("quoted", "quoted", "<|im_end|>"),
    cell("<|im_end|>", "\n", "<|im_end|>", special=True),
]}], "other_better": [], "documents": {}}

CHAT = {
    "run": "runs/next-batch-block-chat/instruct", "raw_diff": 0.4957, "chat_diff": 0.5746, "reduction": -0.0789,
    "reduction_ci": [-0.1528, -0.0401], "share_of_raw_explained": -0.0789 / 0.4957,
    "per_domain": {
        "Licenses": {"n_tokens": 3211, "n_documents": 1, "raw_diff": 0.4047, "chat_diff": 0.3963, "reduction": 0.0084,
                     "reduction_ci": [0.0084, 0.0084], "share_of_raw_explained": 0.0084 / 0.4047},
        "DM Mathematics": {"n_tokens": 7230, "n_documents": 14, "raw_diff": 0.9393, "chat_diff": 1.1759,
                           "reduction": -0.2366, "reduction_ci": [-0.2827, -0.1919],
                           "share_of_raw_explained": -0.2366 / 0.9393},
    },
    "attribution": {"dimensions": {"position": {"n_tokens": 10441, "n_documents": 15, "diff": 0.5746,
                                                "ci_low": 0.3989, "ci_high": 0.8555, "buckets": []}},
                    "top_tokens": {}, "top_spans": {}, "top_documents": {}},
}


def spans_of(page: str) -> list[tuple[str, str, str]]:
    """(class, tooltip, text) of each token of a token view, unescaped."""
    found = re.findall(r'<span class="([^"]*)" style="[^"]*" title="([^"]*)" data-delta="[^"]*">([^<]*)</span>', page)
    return [(cls, html.unescape(tip), html.unescape(text)) for cls, tip, text in found]


def test_special_tokens_show_by_name_and_are_set_apart():
    tokens = spans_of(token_view_html("instruct", "base", VIEW))
    assert [(cls, text) for cls, _, text in tokens] == [
        ("tok", "Answer"), ("tok part", ""), ("tok", "“"), ("tok", "quoted"), ("tok special", "<|im_end|>")]
    assert "top-1 instruct '<|im_end|>'" in tokens[0][1] and "top-1 base '<0xE2><0x80>'" in tokens[1][1]
    assert "".join(text for *_, text in tokens) == "Answer“quoted<|im_end|>"
    assert not any("\ufffd" in tip + text or "∅" in text for _, tip, text in tokens)


def test_the_tooltip_says_which_kl_it_gives():
    (_, tip, _), *_ = spans_of(token_view_html("instruct", "base", VIEW))
    assert tip == ("base NLL 1.000 | instruct NLL 3.500 | Δ +2.500 | top-1 base 'Answer' | top-1 instruct "
                   "'<|im_end|>' | KL(base || instruct) 0.750")


def test_a_cell_without_the_special_flag_still_renders():
    """A results.json written before the flag: seven entries a row."""
    old = copy.deepcopy(VIEW)
    old["other_worse"][0]["tokens"] = [c[:7] for c in old["other_worse"][0]["tokens"]]
    assert [cls for cls, _, _ in spans_of(token_view_html("instruct", "base", old))] == [
        "tok", "tok part", "tok", "tok", "tok"]


def distribution() -> dict:
    where = {"n_tokens": 19388, "n_documents": 40, "logprob_correlation": 0.8872,
             "kl_bo": {"mean": 0.558, "se": 0.005, "median": 0.316, "p99": 3.53, "max": 8.53, "ci_low": 0.47,
                       "ci_high": 0.70},
             "kl_ob": {"mean": 0.963, "se": 0.016}, "delta_p": {"mean": -0.0398, "se": 0.0012, "rms": 0.1668},
             "same_top": {"share": 0.5186, "se": 0.0036, "ci_low": 0.4996, "ci_high": 0.5454}}
    return {"overall": where, "per_domain": {}}


def calibration() -> dict:
    def model(nll: float) -> dict:
        return {"mean_nll": nll, "mean_entropy": 4.07, "accuracy": 0.31, "mean_confidence": 0.281, "ece": 0.0295,
                "bins": []}

    return {"base": model(3.6671), "other": model(4.1628),
            "base_confident_wrong": {"share_tokens": 0.001, "contribution": 0.0001, "share_of_diff": 0.0002},
            "other_confident_wrong": {"share_tokens": 0.006, "contribution": 0.0213, "share_of_diff": 0.043}}


def test_each_table_has_a_title_of_its_own():
    entry = {"distribution": distribution(), "calibration": calibration()}
    titles = [distribution_table("instruct", entry, "base").title, calibration_table("instruct", entry, "base").title,
              chat_table("instruct", CHAT, "base").title, chat_domain_table("instruct", CHAT).title]
    assert titles == ["instruct against base: how the two predicted distributions differ",
                      "instruct against base: calibration and confident mistakes",
                      "instruct: raw text against chat-formatted", "instruct: the chat format's effect per domain"]


def test_the_confident_and_wrong_column_is_a_share_of_tokens():
    table = calibration_table("instruct", {"calibration": calibration()}, "base")
    column = table.headers.index("Confident (p > 0.9) and wrong: share of tokens")
    assert [row[column].display for row in table.rows] == ["0.1%", "0.6%"]


def test_the_chat_table_counts_tokens_and_gives_shares_of_the_raw_d_apart():
    table = chat_table("instruct", CHAT, "base")
    assert table.headers == ["Other model", "D against base", "95% CI", "Tokens", "Share of the raw D"]
    assert [[c.display for c in row] for row in table.rows] == [
        ["instruct, raw", "+0.4957", "", "10,441", "100.0%"],
        ["instruct, chat-formatted", "+0.5746", "+0.3989 to +0.8555", "10,441", "115.9%"],
        ["taken away by the format (raw - chat)", "-0.0789", "-0.1528 to -0.0401", "10,441", "-15.9%"]]


def test_the_chat_change_per_domain():
    table = chat_domain_table("instruct", CHAT)
    assert [[c.display for c in row] for row in table.rows] == [
        ["DM Mathematics", "7,230", "+0.9393", "+1.1759", "-0.2366", "-0.2827 to -0.1919"],
        ["Licenses", "3,211", "+0.4047", "+0.3963", "+0.0084", "n/a (1 document)"],
        ["all", "10,441", "+0.4957", "+0.5746", "-0.0789", "-0.1528 to -0.0401"]]


@pytest.fixture
def explained() -> dict:
    results = make_results()
    results["explanation"] = {"configuration": "next-batch-block", "chat_user_turn": "Please write a document.",
                              "models": {"instruct": {"skipped": None, "chat": CHAT, "token_view": VIEW}}}
    return results


def md_rows(md: str, title: str) -> list[list[str]]:
    """The cells of the rows of the Markdown table under `title`."""
    block = md.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [[html.unescape(c.strip()) for c in line.strip("|").split(" | ")] for line in block]


def html_rows(page: str, title: str) -> list[list[str]]:
    table = page.split(f"<h3>{html.escape(title)}</h3>", 1)[1].split("</table>", 1)[0]
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S) if "<td" in row]


def test_the_report_shows_the_chat_change_per_domain_in_both_renderings(tmp_path, explained):
    write_report(tmp_path, explained)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    title = "instruct: the chat format's effect per domain"
    expected = [[c.display for c in row] for row in chat_domain_table("instruct", CHAT).rows]
    assert md_rows(md, title) == expected == html_rows(page, title)
    with open(tmp_path / "chat_format_per_domain.csv", newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    assert [(r["domain"], float(r["raw_diff"]), float(r["reduction_ci_low"])) for r in records] == [
        ("DM Mathematics", 0.9393, -0.2827), ("Licenses", 0.4047, 0.0084)]
    assert "KL(base || instruct)" in page and 'class="tok special"' in page
    write_report(tmp_path / "again", copy.deepcopy(explained))
    for name in ("report.md", "report.html", "chat_format.csv", "chat_format_per_domain.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / name).read_bytes(), name
