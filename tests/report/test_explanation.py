"""The token view of "Where the difference comes from": special tokens by name and set apart, characters whole, and a
tooltip that says which KL it gives. The view below is written by hand, so these tests need no model."""

from __future__ import annotations

import copy
import html
import re

from lossgap.report.explanation import token_view_html


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
