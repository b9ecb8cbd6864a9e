"""The explanation's token view shows what the report needs to read (whole characters, special tokens by name) and the
chat format's change per domain is each domain's own D, raw and chat-formatted."""

from __future__ import annotations

import numpy as np
import pytest

from lossgap.analysis import explanation
from lossgap.analysis.explanation import token_view
from lossgap.analysis.textclass import vocab_table

DEMO = "src/lossgap/demo_models/instruct"
IM_END = 2
TEXTS = ["Code objects represent “pseudo-compiled” executable code — naïve café, 日本語のテキスト 😀 and Ελληνικά.\n",
         "Question: What is 2 + 2? Answer: 4\n",
         "plain words on a line of their own, nothing else\n"]


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    return tokenizer, vocab_table(tokenizer)


def paired_tokens(tokenizer, texts: list[str], worse: int) -> dict[str, np.ndarray]:
    """A pairs file's columns for `texts` (one document each, every token a target): document `worse` is where the
    other model loses, and its top-1 prediction is always <|im_end|>."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    doc_id = np.concatenate([np.full(len(x), d) for d, x in enumerate(ids)])
    n = doc_id.size
    return {"doc_id": doc_id, "pos": np.concatenate([np.arange(1, len(x) + 1) for x in ids]),
            "target": np.concatenate(ids), "nll_b": np.ones(n), "nll_o": np.where(doc_id == worse, 3.0, 0.5),
            "argmax_b": np.concatenate(ids), "argmax_o": np.full(n, IM_END), "kl_bo": np.full(n, 0.25)}


def test_the_token_view_decodes_a_document_as_a_whole(demo):
    """Curly quotes, accents, CJK and an emoji split over byte-level tokens: no U+FFFD, the cells add up to the text,
    and a token holding only part of a character shows nothing of it."""
    tokenizer, vocab = demo
    view = token_view(paired_tokens(tokenizer, TEXTS, worse=0), vocab)
    (shown, *_) = view["documents"]["other_worse"]
    cells = shown["tokens"]
    assert shown["doc_id"] == 0 and "".join(c[0] for c in cells) == TEXTS[0]
    assert not any("\ufffd" in c[0] for c in cells)
    assert "" in [c[0] for c in cells] and "“" in [c[0] for c in cells]
    (span, *_) = view["other_worse"]
    assert "".join(c[0] for c in span["tokens"]) in TEXTS[0] and not any("\ufffd" in c[0] for c in span["tokens"])


def test_the_token_view_names_and_flags_special_tokens(demo):
    tokenizer, vocab = demo
    tokens = paired_tokens(tokenizer, TEXTS, worse=1)
    last_of_doc_1 = np.flatnonzero(tokens["doc_id"] == 1)[-1]
    tokens["target"][last_of_doc_1] = IM_END  # the document ends on the chat end-of-turn token
    view = token_view(tokens, vocab)
    (shown, *_) = view["documents"]["other_worse"]
    *text, last = shown["tokens"]
    assert shown["doc_id"] == 1 and last[0] == "<|im_end|>" and last[7] is True
    assert not any(c[7] for c in text) and {c[4] for c in shown["tokens"]} == {"<|im_end|>"}
    assert [c[3] for c in text] == [c[0] for c in text]  # the baseline's top-1 is each target, shown alone
    assert "".join(c[0] for c in shown["tokens"]) == TEXTS[1].removesuffix("\n") + "<|im_end|>"


def test_chat_change_per_selection_by_hand():
    """Two documents of one domain, one of another: each domain's D raw, D chat and the change, from its own
    tokens."""
    raw = {"doc_id": np.array([0, 0, 1, 2, 2]), "nll_b": np.array([1.0, 2.0, 1.0, 3.0, 1.0]),
           "nll_o": np.array([2.0, 2.0, 2.0, 4.0, 1.0])}
    chat = {"nll_o": np.array([1.5, 2.0, 1.0, 3.0, 2.0])}
    first = explanation.chat_change(raw, chat, raw["doc_id"] <= 1, 200, 0)
    assert (first["n_tokens"], first["n_documents"]) == (3, 2)
    assert first["raw_diff"] == pytest.approx(2 / 3) and first["chat_diff"] == pytest.approx(0.5 / 3)
    assert first["reduction"] == pytest.approx(1.5 / 3) and first["share_of_raw_explained"] == pytest.approx(0.75)
    low, high = first["reduction_ci"]
    assert 0 <= low <= high <= 1.0  # per-document means of the change: 0.25 and 1.0
    second = explanation.chat_change(raw, chat, raw["doc_id"] == 2, 200, 0)
    assert (second["raw_diff"], second["chat_diff"], second["reduction"], second["n_documents"]) == (0.5, 0.5, 0.0, 1)
