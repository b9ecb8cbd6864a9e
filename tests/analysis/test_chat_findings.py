"""The chat-format finding and the chat table's words follow from their numbers for every sign (issue 21): the raw D
above, below or at zero, the change the format makes above, below or at zero, and a gap that narrows, closes or
reverses; the spread over user turns and the end-of-turn final targets, each said as its numbers say. Every result
here is built by hand."""

from __future__ import annotations

import pytest

from lossgap.analysis.chat_findings import change_effect, chat_finding, final_target_sentence, turns_sentence
from lossgap.report.explanation_tables import chat_table

TINY = 0.00001  # prints as zero at 4 decimals


def chat_result(raw: float, formatted: float, width: float = 0.01, per_domain: dict | None = None) -> dict:
    """results.json's `chat` as analysis/explanation.py _chat writes it: the change's interval `width` either side,
    its words from change_effect."""
    reduction = raw - formatted
    low, high = reduction - width, reduction + width
    out = {"raw_diff": raw, "chat_diff": formatted, "reduction": reduction, "reduction_ci": [low, high],
           "effect": change_effect("sft", "base", raw, formatted, (-high, -low)),
           "attribution": {"dimensions": {"position": {"n_tokens": 1000, "n_documents": 10, "diff": formatted,
                                                       "ci_low": formatted - 0.1, "ci_high": formatted + 0.1,
                                                       "buckets": []}}}}
    return out | ({"per_domain": per_domain} if per_domain is not None else {})


NO_EFFECT = "no effect of the format is shown at the 95% level"
SAME = "the format leaves sft's loss the same to 4 decimals"
SIGNS = [  # (raw D, chat-formatted D, interval width of the change, what the format does)
    # raw D > 0: a gap
    (0.5, 0.6, 0.01, "the format raises sft's loss, widening the raw gap by 20%"),
    (0.5, 0.4, 0.01, "the format lowers sft's loss, narrowing the raw gap by 20%"),
    (0.5, 0.0, 0.01, "the format lowers sft's loss and closes the raw gap"),
    (0.5, -0.1, 0.01, "the format lowers sft's loss past base's: the raw gap reverses, and formatted sft is better "
                      "than base"),
    (0.5, 0.5 + TINY, TINY / 2, SAME),
    (0.5, 0.5 + TINY, 0.01, NO_EFFECT),
    # raw D < 0: an advantage of the other model
    (-0.5, -0.6, 0.01, "the format lowers sft's loss, widening the raw advantage of sft by 20%"),
    (-0.5, -0.4, 0.01, "the format raises sft's loss, narrowing the raw advantage of sft by 20%"),
    (-0.5, 0.0, 0.01, "the format raises sft's loss and closes the raw advantage of sft"),
    (-0.5, 0.1, 0.01, "the format raises sft's loss past base's: the raw advantage of sft reverses, and formatted "
                      "sft is worse than base"),
    (-0.5, -0.5 - TINY, TINY / 2, SAME),
    (-0.5, -0.5 - TINY, 0.01, NO_EFFECT),
    # raw D ~ 0: the same loss on the raw text
    (TINY, 0.1, 0.01, "the format raises sft's loss: the models give the same loss on the raw text, and sft is worse "
                      "than base in its own format"),
    (TINY, -0.1, 0.01, "the format lowers sft's loss: the models give the same loss on the raw text, and sft is "
                       "better than base in its own format"),
    (TINY, 2 * TINY, TINY / 2, SAME),
    (TINY, 2 * TINY, 0.01, NO_EFFECT),
]
SIGN_IDS = ["gap-widens", "gap-narrows", "gap-closes", "gap-reverses", "gap-same", "gap-no-effect",
            "advantage-widens", "advantage-narrows", "advantage-closes", "advantage-reverses", "advantage-same",
            "advantage-no-effect", "even-worse", "even-better", "even-same", "even-no-effect"]


@pytest.mark.parametrize(("raw", "formatted", "width", "words"), SIGNS, ids=SIGN_IDS)
def test_the_chat_finding_and_the_chat_table_are_worded_for_every_sign(raw, formatted, width, words):
    chat = chat_result(raw, formatted, width)
    change, reduction = formatted - raw, raw - formatted
    ci = f"95% CI {-(reduction + width):+.4f} to {-(reduction - width):+.4f}"
    assert chat_finding("sft", "base", chat) == (
        f"Chat format: with each document as its reply in its own chat template, sft's difference is "
        f"{formatted:+.4f} instead of {raw:+.4f} nats/token, a change of {change:+.4f} ({ci}): {words}.")
    table = chat_table("sft", chat, "base")
    assert [[c.display for c in row] for row in table.rows] == [
        ["sft, raw", f"{raw:+.4f}", "", "1,000", ""],
        ["sft, chat-formatted", f"{formatted:+.4f}", f"{formatted - 0.1:+.4f} to {formatted + 0.1:+.4f}", "1,000", ""],
        ["change (chat - raw)", f"{change:+.4f}", ci.removeprefix("95% CI "), "1,000", words]]


def _domain(raw: float, formatted: float) -> dict:
    return {"n_tokens": 500, "n_documents": 5, "raw_diff": raw, "chat_diff": formatted, "reduction": raw - formatted,
            "reduction_ci": [0.0, 0.1]}


@pytest.mark.parametrize(("raw", "formatted", "conclusion"), [
    (0.5, 0.6, ", so the gap is not explained by the raw text's format."),
    (0.5, 0.4, ", so part of the gap is the raw text's format."),
    (0.5, 0.0, ", so all of the gap is the raw text's format."),
    (0.5, -0.1, ", so all of the gap is the raw text's format."),
    (-0.5, -0.6, "."),  # an advantage of the other model: no conclusion about a gap
    (-0.5, -0.4, "."),
    (TINY, 0.1, "."),
], ids=["widens", "narrows", "closes", "reverses", "advantage-widens", "advantage-narrows", "even"])
def test_a_conclusion_about_the_gap_is_drawn_only_as_far_as_its_numbers_go(raw, formatted, conclusion):
    """Both domains change the way the whole does, so a conclusion is drawn; its words follow the sign."""
    change = formatted - raw
    domains = {"a": _domain(raw, raw + change), "b": _domain(raw, raw + change)}
    text = chat_finding("sft", "base", chat_result(raw, formatted, per_domain=domains))
    words = change_effect("sft", "base", raw, formatted, (change - 0.01, change + 0.01))
    assert f": {words}{conclusion} By domain" in text, text


@pytest.mark.parametrize(("changes", "said"), [
    ([0.02, 0.01, 0.03], "in the same direction after every one"),
    ([-0.02, -0.01, -0.03], "in the same direction after every one"),
    ([0.02, TINY, 0.03], "in the same direction after 2 of them and unchanged after the others"),
    ([0.02, -0.01, 0.03], "in opposite directions depending on the turn: the sign of the change is not settled"),
    ([TINY, -TINY, 0.0], "unchanged to 4 decimals after every one"),
], ids=["up", "down", "partly", "both", "none"])
def test_the_spread_over_user_turns_says_what_the_changes_do(changes, said):
    turns = {"per_turn": [{"reduction": -c} for c in changes], "change_mean": sum(changes) / len(changes),
             "change_min": min(changes), "change_max": max(changes)}
    assert turns_sentence(turns).endswith(f"nats/token (mean {sum(changes) / len(changes):+.4f}), {said}.")


END_OF_TURN = {"end_of_turn": True, "raw": {"id": 0, "text": "<|endoftext|>"}, "chat": {"id": 2, "text": "<|im_end|>"},
               "n_tokens": 1000, "n_shared": 990, "n_differ": 10,
               "final": {"raw_diff": 0.25, "chat_diff": -4.75, "reduction": 5.0,
                         "effect": "the format lowers sft's loss past base's: the raw gap reverses, and formatted sft "
                                   "is better than base"},
               "all_tokens": {"raw_diff": 0.5, "chat_diff": 0.45, "reduction": 0.05,
                              "effect": "the format lowers sft's loss, narrowing the raw gap by 10%"}}


def test_the_finding_states_the_final_targets_and_gives_the_change_over_the_shared_tokens():
    chat = chat_result(0.5, 0.6) | {"final_targets": END_OF_TURN}
    text = chat_finding("sft", "base", chat)
    assert text.startswith("Chat format: with each document as its reply in its own chat template, sft's difference "
                           "is +0.6000 instead of +0.5000 nats/token over the 990 tokens both runs share, a change of "
                           "+0.1000")
    assert text.endswith(
        " Its chat-formatted run ends each whole document with <|im_end|>, its end-of-turn token, where the raw run "
        "has <|endoftext|>: 10 of 1,000 targets differ, one per whole document. On those final targets sft's "
        "difference is -4.7500 (<|im_end|> after its chat template) instead of +0.2500 (<|endoftext|> after the raw "
        "text), a change of -5.0000; over all 1,000 tokens, each run with its own final target, it is +0.4500 instead "
        "of +0.5000, a change of -0.0500.")


def test_the_final_targets_are_not_mentioned_without_the_option_and_said_equal_when_the_end_is_the_eos():
    eos = {"id": 0, "text": "<|endoftext|>"}
    off = {"end_of_turn": False, "raw": eos, "chat": eos, "n_tokens": 1000, "n_shared": 1000, "n_differ": 0}
    assert final_target_sentence("sft", "base", off) == ""
    assert final_target_sentence("sft", "base", off | {"end_of_turn": True}) == (
        " sft's chat template ends a reply with <|endoftext|>, the EOS itself: both runs end each whole document with "
        "it, and every target is the same.")
    none_whole = END_OF_TURN | {"n_shared": 1000, "n_differ": 0}
    assert final_target_sentence("sft", "base", none_whole) == (
        " Its chat-formatted run would end each whole document with <|im_end|> where the raw run has <|endoftext|>, "
        "but no document was scored whole: every target is the same.")
