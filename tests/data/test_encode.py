"""Tokenization: the BOS/EOS policy, ids = [bos] + text tokens + [eos], UTF-8 byte counts, the token limit."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from lossgap.config import CorpusConfig, TokenizeConfig
from lossgap.data.corpus import Corpus, Document
from lossgap.data.encode import SpecialTokens, TokenizedDocument, encode_documents, resolve_special_tokens
from lossgap.errors import ModelError, UsageError
from tests.helpers import write_jsonl

VOCAB = 384  # the conftest tokenizer: <pad>=0, <bos>=1, <eos>=2
BOTH = SpecialTokens(1, 2)

TEXTS = [
    "def mean(values):\n    return sum(values) / len(values)\n",
    "Überprüfung: naïve café, 日本語のテキスト, emoji 🙂.",
    "plain ASCII prose about nothing in particular",
    "x",
    "  indented\n\ttabbed\r\nwindows line",
]


def docs_of(texts=TEXTS) -> list[Document]:
    return [Document(doc_id=10 + i, text=t, domain=f"d{i % 2}", source=f"corpus.jsonl:{i + 1}")
            for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def no_bos_tokenizer(tokenizer):
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>", pad_token="<pad>"
    )
    assert tok.bos_token_id is None and tok.eos_token_id == 2
    return tok


@pytest.fixture(scope="module")
def bare_tokenizer(tokenizer):
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>")
    assert tok.bos_token_id is None and tok.eos_token_id is None
    return tok


# --- resolve_special_tokens ---


def test_conftest_tokenizer_ids(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (1, 2, VOCAB)


@pytest.mark.parametrize(
    ("cfg", "want"),
    [
        (TokenizeConfig(), SpecialTokens(1, 2)),  # BOS because the tokenizer defines one, EOS by default
        (TokenizeConfig(add_bos=True), SpecialTokens(1, 2)),
        (TokenizeConfig(add_bos=False), SpecialTokens(None, 2)),
        (TokenizeConfig(add_eos=False), SpecialTokens(1, None)),
        (TokenizeConfig(add_bos=False, add_eos=False), SpecialTokens(None, None)),
        (TokenizeConfig(bos_id=5, eos_id=6), SpecialTokens(5, 6)),
        (TokenizeConfig(bos_id=5, add_bos=False), SpecialTokens(None, 2)),
        (TokenizeConfig(eos_id=0, add_eos=False), SpecialTokens(1, None)),
        (TokenizeConfig(bos_id=0, eos_id=VOCAB - 1), SpecialTokens(0, VOCAB - 1)),  # both ends of the range
    ],
)
def test_policy_with_a_bos_tokenizer(tokenizer, cfg, want):
    assert resolve_special_tokens(tokenizer, cfg, VOCAB) == want


def test_policy_with_a_tokenizer_without_bos(no_bos_tokenizer, bare_tokenizer):
    assert resolve_special_tokens(no_bos_tokenizer, TokenizeConfig(), VOCAB) == SpecialTokens(None, 2)
    cfg = TokenizeConfig(add_bos=True, bos_id=7)
    assert resolve_special_tokens(no_bos_tokenizer, cfg, VOCAB) == SpecialTokens(7, 2)
    assert resolve_special_tokens(no_bos_tokenizer, TokenizeConfig(bos_id=7), VOCAB) == SpecialTokens(7, 2)
    with pytest.raises(UsageError) as err:
        resolve_special_tokens(no_bos_tokenizer, TokenizeConfig(add_bos=True), VOCAB)
    assert "no BOS" in str(err.value) and "--bos-id" in str(err.value) and "--no-bos" in str(err.value)
    # a tokenizer without EOS gets none appended, unless an id is given
    assert resolve_special_tokens(bare_tokenizer, TokenizeConfig(), VOCAB) == SpecialTokens(None, None)
    assert resolve_special_tokens(bare_tokenizer, TokenizeConfig(eos_id=2), VOCAB) == SpecialTokens(None, 2)


@pytest.mark.parametrize(
    ("cfg", "vocab_size", "words"),
    [
        (TokenizeConfig(bos_id=VOCAB), VOCAB, ["--bos-id 384", "384"]),
        (TokenizeConfig(bos_id=-1), VOCAB, ["--bos-id -1"]),
        (TokenizeConfig(eos_id=10_000), VOCAB, ["--eos-id 10000"]),
        (TokenizeConfig(eos_id=-3), VOCAB, ["--eos-id -3"]),
        (TokenizeConfig(), 2, ["tokenizer's eos id 2", "size 2"]),  # the tokenizer's own EOS is checked too
        (TokenizeConfig(), 1, ["tokenizer's bos id 1"]),
    ],
)
def test_out_of_vocabulary_special_ids(tokenizer, cfg, vocab_size, words):
    with pytest.raises(UsageError) as err:
        resolve_special_tokens(tokenizer, cfg, vocab_size)
    for word in words:
        assert word in str(err.value)
    assert err.value.fix


def test_unused_out_of_vocabulary_id_is_not_an_error(tokenizer):
    cfg = TokenizeConfig(add_bos=False, bos_id=VOCAB + 5, add_eos=False, eos_id=-1)
    assert resolve_special_tokens(tokenizer, cfg, VOCAB) == SpecialTokens(None, None)


# --- encode_documents ---


def reference_ids(tokenizer, text, bos, eos) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])


@pytest.mark.parametrize("special", [SpecialTokens(1, 2), SpecialTokens(None, 2), SpecialTokens(1, None),
                                     SpecialTokens(None, None), SpecialTokens(7, 9)])
def test_ids_are_bos_text_eos(tokenizer, special):
    docs = docs_of()
    out = list(encode_documents(docs, tokenizer, special, VOCAB))
    assert len(out) == len(docs)
    for doc, enc in zip(docs, out, strict=True):
        assert isinstance(enc, TokenizedDocument)
        assert (enc.doc_id, enc.domain, enc.source) == (doc.doc_id, doc.domain, doc.source)
        assert enc.ids.dtype == np.int64 and enc.ids.ndim == 1
        assert enc.ids.tolist() == reference_ids(tokenizer, doc.text, special.bos_id, special.eos_id)
        assert tokenizer.decode(reference_ids(tokenizer, doc.text, None, None)) == doc.text  # lossless BPE


def test_text_tokens_do_not_include_the_tokenizer_specials(tokenizer):
    enc = next(encode_documents(docs_of(["hello world"]), tokenizer, SpecialTokens(1, 2), VOCAB))
    assert enc.ids[0] == 1 and enc.ids[-1] == 2
    assert 1 not in enc.ids[1:-1].tolist() and 2 not in enc.ids[1:-1].tolist()


def test_n_bytes_is_utf8_length(tokenizer):
    texts = ["abc", "café", "日本語", "🙂🙂", "naïve — “quoted”"]
    out = list(encode_documents(docs_of(texts), tokenizer, SpecialTokens(1, 2), VOCAB))
    assert [d.n_bytes for d in out] == [3, 5, 9, 8, 23]
    assert [d.n_bytes for d in out] == [len(t.encode("utf-8")) for t in texts]
    assert [len(t) for t in texts] == [3, 4, 3, 2, 16]  # characters differ from bytes


@pytest.mark.parametrize("batch_docs", [1, 2, 3, 64])
def test_batching_does_not_change_the_result(tokenizer, batch_docs):
    want = [d.ids.tolist() for d in encode_documents(docs_of(), tokenizer, BOTH, VOCAB, batch_docs=1)]
    got = list(encode_documents(iter(docs_of()), tokenizer, BOTH, VOCAB, batch_docs=batch_docs))
    assert [d.ids.tolist() for d in got] == want
    assert [d.doc_id for d in got] == [10, 11, 12, 13, 14]


def test_empty_input(tokenizer):
    assert list(encode_documents([], tokenizer, SpecialTokens(1, 2), VOCAB)) == []


def lengths(tokenizer) -> list[int]:
    return [len(reference_ids(tokenizer, t, 1, 2)) for t in TEXTS]


@pytest.mark.parametrize("batch_docs", [1, 2, 64])
def test_max_tokens_stops_once_the_running_total_reaches_the_limit(tokenizer, batch_docs):
    n = lengths(tokenizer)
    special = SpecialTokens(1, 2)

    def taken(limit):
        return [d.doc_id for d in encode_documents(docs_of(), tokenizer, special, VOCAB, limit, batch_docs)]

    assert taken(None) == [10, 11, 12, 13, 14]
    assert taken(1) == [10]  # the first document is taken whole even if longer than the limit
    assert taken(n[0]) == [10]  # exactly reached: stop
    assert taken(n[0] + 1) == [10, 11]  # one short: the next document is taken whole
    assert taken(n[0] + n[1]) == [10, 11]
    assert taken(n[0] + n[1] + 1) == [10, 11, 12]
    assert taken(sum(n)) == [10, 11, 12, 13, 14]
    assert taken(10 * sum(n)) == [10, 11, 12, 13, 14]


def test_max_tokens_does_not_pull_documents_past_the_limit(tokenizer):
    """Once the limit is reached no further document is read from the corpus (nor its bad records hit)."""
    n = lengths(tokenizer)
    pulled = []

    def stream():
        for doc in docs_of():
            pulled.append(doc.doc_id)
            yield doc

    got = list(encode_documents(stream(), tokenizer, BOTH, VOCAB, max_tokens=n[0] + n[1], batch_docs=2))
    assert [d.doc_id for d in got] == [10, 11]
    assert pulled == [10, 11]
    pulled.clear()
    got = list(encode_documents(stream(), tokenizer, BOTH, VOCAB, max_tokens=n[0], batch_docs=1))
    assert [d.doc_id for d in got] == [10] and pulled == [10]


def test_token_outside_the_vocabulary_is_a_model_error(tokenizer):
    ids = tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    small_vocab = max(ids)  # the largest text token no longer fits
    docs = docs_of(["x", TEXTS[1]])
    first_max = max(tokenizer("x", add_special_tokens=False)["input_ids"])
    assert first_max < small_vocab  # document 1 fits, document 2 does not
    stream = encode_documents(docs, tokenizer, SpecialTokens(1, 2), small_vocab)
    assert next(stream).doc_id == 10
    with pytest.raises(ModelError) as err:
        next(stream)
    message = str(err.value)
    assert "corpus.jsonl:2" in message and f"token id {max(ids)}" in message and f"({small_vocab})" in message
    assert "fix:" in message


def test_special_token_outside_the_vocabulary_is_a_model_error(tokenizer):
    with pytest.raises(ModelError, match="corpus.jsonl:1: token id 500"):
        list(encode_documents(docs_of(["a"]), tokenizer, SpecialTokens(1, 500), VOCAB))


def test_corpus_to_tokens(tmp_path, tokenizer):
    """A JSONL corpus read and tokenized: ids, byte counts and doc_ids follow the records."""
    records = [{"text": t, "meta": {"pile_set_name": "P"}} for t in TEXTS]
    path = write_jsonl(tmp_path / "pile.jsonl", [*records[:2], '{"text": ""}', *records[2:]])
    corpus = Corpus(CorpusConfig(str(path), on_bad_line="skip"))
    special = resolve_special_tokens(tokenizer, TokenizeConfig(), VOCAB)
    out = list(encode_documents(corpus, tokenizer, special, VOCAB))
    assert [d.doc_id for d in out] == [0, 1, 3, 4, 5]
    assert [d.ids.tolist() for d in out] == [reference_ids(tokenizer, t, 1, 2) for t in TEXTS]
    assert [d.n_bytes for d in out] == [len(t.encode()) for t in TEXTS]
    assert [d.source for d in out][2] == f"{path}:4"
    assert len(corpus.bad_records) == 1
