"""Tokenization: the BOS/EOS policy, ids = [bos] + text tokens + [eos], UTF-8 byte counts, the token limit."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from lossgap.config import CorpusConfig, TokenizeConfig
from lossgap.data.corpus import Corpus, Document
from lossgap.data.encode import (
    SpecialTokens,
    TokenizedDocument,
    chat_end_of_turn,
    chat_prefix,
    encode_documents,
    resolve_special_tokens,
)
from lossgap.errors import ModelError, UsageError
from tests.helpers import read_summary, read_tokens, run_cli, write_jsonl

SRC = Path(__file__).parents[2] / "src"

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
@pytest.mark.parametrize("special", [BOTH, SpecialTokens(None, 2), SpecialTokens(1, None)], ids=str)
def test_max_tokens_takes_exactly_the_cap_and_cuts_the_last_document(tokenizer, batch_docs, special):
    """The documents' tokens (BOS + text + EOS) add up to the cap exactly; each is the uncapped document or, the
    last, its beginning without EOS. The one exception: a cut that would leave only BOS stops one token short."""
    full = list(encode_documents(docs_of(), tokenizer, special, VOCAB))
    n = [len(d.ids) for d in full]
    bos = int(special.bos_id is not None)
    for cap in sorted({1, 2, n[0] - 1, n[0], n[0] + 1, n[0] + 3, sum(n) - 1, sum(n), 10 * sum(n)}):
        got = list(encode_documents(docs_of(), tokenizer, special, VOCAB, cap, batch_docs))
        total = sum(len(d.ids) for d in got)
        running = np.cumsum([0, *n])
        only_bos_left = bos and any(cap - running[i] == 1 for i in range(len(n)))
        assert total == min(cap, sum(n)) - (1 if only_bos_left else 0), cap
        for g, f in zip(got, full, strict=False):
            assert g.doc_id == f.doc_id and g.ids.tolist() == f.ids[: len(g.ids)].tolist()
        assert all(len(g.ids) == len(f.ids) for g, f in zip(got[:-1], full, strict=False))


def test_a_long_text_is_never_tokenized_whole_and_its_first_tokens_are_the_whole_texts(tokenizer):
    """A 1,000,000-character document under a cap of 5,000: 5,000 tokens, the first of its full tokenization, and
    the tokenizer never sees more than a few times the text those tokens come from."""
    text = " ".join(TEXTS * 20_000)[:1_000_000]
    seen = []

    def spy(texts, **kwargs):
        seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
        return tokenizer(texts, **kwargs)

    spy.is_fast = True
    got = list(encode_documents(docs_of([text, "never read"]), spy, BOTH, VOCAB, max_tokens=5000))
    assert len(got) == 1 and len(got[0].ids) == 5000
    want = tokenizer(text, add_special_tokens=False)["input_ids"][:4999]
    assert got[0].ids.tolist() == [1, *want]  # BOS + the first 4,999 text tokens, no EOS
    assert max(seen) < 200_000
    assert got[0].n_bytes == len(tokenizer.decode(want).encode("utf-8"))  # bits per byte: the bytes kept


def test_a_chat_prefix_does_not_count_against_the_cap(tokenizer):
    """The raw documents are cut at the same token with or without a chat prefix (context, standing in for BOS)."""
    plain = list(encode_documents(docs_of(), tokenizer, BOTH, VOCAB, 20))
    chat = list(encode_documents(docs_of(), tokenizer, BOTH, VOCAB, 20, prefix=[5, 6, 7, 1]))
    assert [d.context for d in chat] == [3] * len(chat) and len(plain) == len(chat)
    assert [d.ids[1:].tolist() for d in plain] == [d.ids[d.context + 1:].tolist() for d in chat]


def test_the_cap_is_recorded_for_the_summary(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS])
    corpus = Corpus(CorpusConfig(str(path), max_tokens=12))
    got = list(encode_documents(corpus, tokenizer, BOTH, VOCAB, max_tokens=12))
    assert sum(len(d.ids) for d in got) == 12
    assert corpus.token_cap.facts() == {"cap": 12, "tokens": 12, "documents": len(got), "last_document_cut": True}
    assert Corpus(CorpusConfig(str(path))).token_cap.facts() is None


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


# --- --max-tokens through the command line ---


@pytest.mark.parametrize("bos", ["--bos", "--no-bos"])
def test_cli_max_tokens_scores_exactly_the_first_tokens_of_the_uncapped_run(tmp_path, llama_dir, pile_jsonl, capsys,
                                                                          bos):
    """--max-tokens 500: the documents' input tokens (BOS if any + text + EOS, the cut one without EOS) are exactly
    500, so the scored targets are 500 - documents x label offset (a document's first token is never a target, BOS
    or not); each scored (document, position) is one of the uncapped run's, with its NLL."""
    common = ["--model", llama_dir, "--corpus", pile_jsonl, "--seq-len", 64, bos]
    assert run_cli(capsys, *common, "--out", tmp_path / "full")[0] == 0
    assert run_cli(capsys, *common, "--out", tmp_path / "cap", "--max-tokens", 500)[0] == 0
    summary, documents = read_summary(tmp_path / "cap"), pq.read_table(tmp_path / "cap" / "documents.parquet")
    facts = summary["max_tokens"]
    assert facts == {"cap": 500, "tokens": 500, "documents": documents.num_rows, "last_document_cut": True}
    assert sum(documents.column("n_input_tokens").to_pylist()) == 500 == summary["input_tokens"]
    assert summary["n_tokens"] == 500 - facts["documents"]
    capped, full = read_tokens(tmp_path / "cap"), read_tokens(tmp_path / "full")
    both = capped.merge(full, on=["doc_id", "pos"], suffixes=("", "_full"))
    assert len(both) == len(capped) == 500 - facts["documents"]
    assert np.allclose(both["nll"], both["nll_full"], rtol=0, atol=1e-5)
    for doc_id, group in capped.groupby("doc_id"):  # each document's first targets
        positions = np.sort(full.pos[full.doc_id == doc_id].to_numpy())
        assert sorted(group.pos) == positions[: len(group)].tolist()
    last = capped.doc_id.max()
    assert (full.doc_id == last).sum() > (capped.doc_id == last).sum()  # the last document was cut


def test_cli_max_tokens_cuts_a_million_character_document(tmp_path, llama_dir, capsys):
    """Before: a 1,000,000-character document scored 1,000,001 tokens under --max-tokens 5000."""
    text = " ".join(TEXTS * 20_000)[:1_000_000]
    corpus = write_jsonl(tmp_path / "long.jsonl", [{"text": text}, {"text": "after the cap: never read"}])
    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", corpus, "--out", tmp_path / "o", "--seq-len", 256,
                           "--max-tokens", 5000, "--batch-size", 8)
    assert code == 0, err
    summary = read_summary(tmp_path / "o")
    assert summary["max_tokens"] == {"cap": 5000, "tokens": 5000, "documents": 1, "last_document_cut": True}
    assert (summary["n_documents"], summary["n_tokens"], summary["input_tokens"]) == (1, 4999, 5000)


RSS_PROBE = ("import resource, sys\nfrom lossgap.cli import main\ncode = main(sys.argv[1:])\n"
             "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nraise SystemExit(code)")


def peak_rss_mb(*argv) -> float:
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, *map(str, argv)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    peak = int(proc.stdout.split("peak")[-1])
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


@pytest.mark.slow
@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="ru_maxrss")
def test_a_50_mb_line_under_a_small_cap_stays_within_memory(tmp_path, llama_dir, pile_jsonl):
    """A single 50 MB JSON line under --max-tokens 100: the run's peak RSS stays within 150 MB (3 x the line) of the
    same run on a small corpus. A JSON line is held whole (bytes, then its text: a record is parsed whole to find its
    text field), but only a few kilobytes of it are tokenized. Before: over 10 GB, still tokenizing after 11 min."""
    line = " ".join(TEXTS)
    text = (line * (50_000_000 // len(line) + 1))[:50_000_000]
    big = write_jsonl(tmp_path / "big.jsonl", [{"text": text}])
    del text
    common = ["score", "--model", llama_dir, "--device", "cpu", "--dtype", "float32", "--quiet", "--seq-len", 64,
              "--max-tokens", 100]
    small_peak = peak_rss_mb(*common, "--corpus", pile_jsonl, "--out", tmp_path / "small")
    big_peak = peak_rss_mb(*common, "--corpus", big, "--out", tmp_path / "big")
    assert read_summary(tmp_path / "big")["max_tokens"]["tokens"] == 100
    assert big_peak - small_peak < 150, (small_peak, big_peak)


# --- the chat template's end-of-turn token (--chat-end-of-turn) ---

SMOLLM2_TEMPLATE = (  # SmolLM2-Instruct's ChatML template
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou "
    "are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_TEMPLATE = (  # Llama-3-Instruct's template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def with_template(tokenizer, template: str, special: list[str], listed: bool = True):
    """The conftest tokenizer with chat tokens added (`listed`: as additional special tokens, as SmolLM2 has them;
    else as added tokens marked special, as Llama 3 has them) and a chat template."""
    tok = copy.deepcopy(tokenizer)
    if listed:
        tok.add_special_tokens({"additional_special_tokens": special})
    else:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.chat_template = template
    return tok


def test_the_end_of_turn_token_is_what_the_template_puts_after_the_reply(tokenizer):
    smollm2 = with_template(tokenizer, SMOLLM2_TEMPLATE, ["<|im_start|>", "<|im_end|>"])
    assert chat_end_of_turn(smollm2, "Please write a document.", "smollm2") == 385
    assert smollm2.convert_ids_to_tokens(385) == "<|im_end|>"
    assert smollm2.decode(chat_prefix(smollm2, "Hi", "smollm2")).endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                          "<|im_start|>assistant\n")
    llama3 = with_template(tokenizer, LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                           listed=False)
    assert llama3.convert_tokens_to_ids("<|eot_id|>") not in llama3.all_special_ids  # special, but not listed
    assert chat_end_of_turn(llama3, "Please write a document.", "llama3") == 386
    assert llama3.convert_ids_to_tokens(386) == "<|eot_id|>"


@pytest.mark.parametrize(("template", "says"), [
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}", "puts nothing after the assistant's"),
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}",
     "puts '\\n\\n', which does not begin with a special token, after the assistant's reply"),
], ids=["nothing", "plain-text"])
def test_a_template_with_no_end_of_turn_token_is_refused_naming_the_model_and_the_fix(tokenizer, template, says):
    tok = with_template(tokenizer, template, [])
    with pytest.raises(ModelError, match="no end-of-turn token") as refused:
        chat_end_of_turn(tok, "Please write a document.", "sft")
    assert says in refused.value.message and refused.value.message.startswith("sft (its chat template): ")
    assert refused.value.fix.startswith("drop --chat-end-of-turn for this model")


def test_the_end_of_turn_token_replaces_the_eos_of_whole_documents_only(tokenizer):
    """Whole documents end with the end-of-turn id in place of EOS; the document the cap cuts has neither, and the
    same documents are cut at the same token."""
    for cap in (None, 20):
        raw = list(encode_documents(docs_of(), tokenizer, BOTH, VOCAB, cap, prefix=[5, 6, 1]))
        ended = list(encode_documents(docs_of(), tokenizer, BOTH, VOCAB, cap, prefix=[5, 6, 1], end_of_turn=9))
        assert [d.ids.size for d in raw] == [d.ids.size for d in ended]
        for a, b in zip(raw, ended, strict=True):
            whole = a.ids[-1] == 2
            assert b.ids[:-1].tolist() == a.ids[:-1].tolist() and b.ids[-1] == (9 if whole else a.ids[-1])
        assert (cap is None) == all(d.ids[-1] == 9 for d in ended)  # the cap cuts the last document taken
