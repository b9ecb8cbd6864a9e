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
from lossgap.report.explanation_tables import (
    calibration_table,
    chat_domain_table,
    chat_table,
    chat_text,
    distribution_table,
)
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
    "effect": "the format raises instruct's loss, widening the raw gap by 16%",
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


def test_the_chat_table_counts_tokens_and_words_the_change_from_its_number():
    table = chat_table("instruct", CHAT, "base")
    assert table.headers == ["Run", "D against base", "95% CI", "Tokens", "What the format does"]
    assert [[c.display for c in row] for row in table.rows] == [
        ["instruct, raw", "+0.4957", "", "10,441", ""],
        ["instruct, chat-formatted", "+0.5746", "+0.3989 to +0.8555", "10,441", ""],
        ["change (chat - raw)", "+0.0789", "+0.0401 to +0.1528", "10,441",
         "the format raises instruct's loss, widening the raw gap by 16%"]]


def test_the_chat_change_per_domain():
    table = chat_domain_table("instruct", CHAT)
    assert table.headers[4] == "Change (chat - raw)"
    assert [[c.display for c in row] for row in table.rows] == [
        ["DM Mathematics", "7,230", "+0.9393", "+1.1759", "+0.2366", "+0.1919 to +0.2827"],
        ["Licenses", "3,211", "+0.4047", "+0.3963", "-0.0084", "n/a (1 document)"],
        ["all", "10,441", "+0.4957", "+0.5746", "+0.0789", "+0.0401 to +0.1528"]]


# --chat-end-of-turn: the chat-formatted run ends each whole document with <|im_end|> where the raw run has
# <|endoftext|>; 40 final targets differ, the headline is over the 10,401 tokens both share
END_OF_TURN = {"end_of_turn": True, "raw": {"id": 0, "text": "<|endoftext|>"}, "chat": {"id": 2, "text": "<|im_end|>"},
               "n_tokens": 10441, "n_shared": 10401, "n_differ": 40,
               "all_tokens": {"n_tokens": 10441, "n_documents": 40, "raw_diff": 0.4957, "chat_diff": 0.5546,
                              "reduction": -0.0589, "reduction_ci": [-0.1328, -0.0201],
                              "effect": "the format raises instruct's loss, widening the raw gap by 12%"},
               "final": {"n_tokens": 40, "n_documents": 40, "raw_diff": 0.25, "chat_diff": -4.75, "reduction": 5.0,
                         "reduction_ci": [4.5, 5.5], "effect": "the format lowers instruct's loss past base's: the "
                         "raw gap reverses, and formatted instruct is better than base"}}


def test_with_an_end_of_turn_final_target_the_chat_table_gives_the_shared_tokens_all_tokens_and_the_final_ones():
    table = chat_table("instruct", CHAT | {"final_targets": END_OF_TURN}, "base")
    rows = [row if isinstance(row, str) else [c.display for c in row] for row in table.rows]
    assert rows == [
        "over the 10,401 tokens both runs share (all but the final targets)",
        ["instruct, raw", "+0.4957", "", "10,441", ""],
        ["instruct, chat-formatted", "+0.5746", "+0.3989 to +0.8555", "10,441", ""],
        ["change (chat - raw)", "+0.0789", "+0.0401 to +0.1528", "10,441",
         "the format raises instruct's loss, widening the raw gap by 16%"],
        "over all 10,441 tokens, each run with its own final target",
        ["instruct, raw", "+0.4957", "", "10,441", ""],
        ["instruct, chat-formatted", "+0.5546", "", "10,441", ""],
        ["change (chat - raw)", "+0.0589", "+0.0201 to +0.1328", "10,441",
         "the format raises instruct's loss, widening the raw gap by 12%"],
        "the 40 final targets alone: <|endoftext|> in the raw run, <|im_end|> in the chat-formatted run",
        ["instruct, raw", "+0.2500", "", "40", ""],
        ["instruct, chat-formatted", "-4.7500", "", "40", ""],
        ["change (chat - raw)", "-5.0000", "-5.5000 to -4.5000", "40",
         "the format lowers instruct's loss past base's: the raw gap reverses, and formatted instruct is better than "
         "base"]]
    assert [(r["tokens"], r["n_tokens"], r["change"]) for r in table.records] == [
        ("shared", 10441, pytest.approx(0.0789)), ("all", 10441, pytest.approx(0.0589)), ("final", 40, -5.0)]


def test_the_chat_paragraph_states_the_final_target_of_each_run():
    turn = "Please write a document."
    assert chat_text("instruct", turn, CHAT | {"final_targets": END_OF_TURN}) == (
        "Chat format: instruct scored again with each document as its reply to the user turn 'Please write a "
        "document.' in its own chat template; the targets are the raw run's but for each whole document's final "
        "target: <|endoftext|> in the raw run, <|im_end|> (its template's end-of-turn token, --chat-end-of-turn) in "
        "the chat-formatted run, 40 of 10,441 targets. The change is given over the 10,401 tokens both runs share, "
        "everything else equal, and apart over all tokens (each run with its own final target) and over the final "
        "targets alone.")
    eos = {"end_of_turn": False, "raw": {"id": 0, "text": "<|endoftext|>"}, "chat": {"id": 0, "text": "<|endoftext|>"},
           "n_tokens": 10441, "n_shared": 10441, "n_differ": 0}
    assert chat_text("instruct", turn, CHAT | {"final_targets": eos}).endswith(
        "in its own chat template; the same tokens are targets, and each whole document ends with <|endoftext|> in "
        "both runs.")
    itself = eos | {"end_of_turn": True}
    assert chat_text("instruct", turn, CHAT | {"final_targets": itself}).endswith(
        "the same tokens are targets, and each whole document ends with <|endoftext|> in both runs "
        "(--chat-end-of-turn: the template ends a reply with <|endoftext|>, the EOS itself).")


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
