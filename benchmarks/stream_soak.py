"""Soak test of the input side at scale: a generated 1-million-document .jsonl.zst streamed through the reader,
the tokenizer and the packed layout, with RSS sampled as it goes. The input pipeline holds a bounded window of
documents, so RSS must stay flat however long the corpus is. (A scoring run also keeps a small summary record per
document, ~100 bytes, for documents.parquet; that grows with the corpus by design.)

  python benchmarks/stream_soak.py --docs 1000000
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from pathlib import Path

import zstandard

from lossgap.config import CorpusConfig, LayoutConfig
from lossgap.data.corpus import Corpus
from lossgap.data.encode import SpecialTokens, encode_documents
from lossgap.data.layout import make_rows, windows
from lossgap.engine.batching import rss

WORDS = ("the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
         "his", "an", "were", "are", "which", "this", "be", "or", "has", "had", "not", "but", "one", "their",
         "they", "have", "it", "its", "first", "new", "more", "after", "also", "two", "other", "been", "all",
         "when", "who", "time", "can")
DOMAINS = ("Pile-CC", "PubMed Central", "Books3", "OpenWebText2", "ArXiv", "Github", "FreeLaw", "StackExchange")


def rss_mb() -> float:
    return rss() / 2**20


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as z:
        out = io.TextIOWrapper(z, encoding="utf-8")
        for i in range(n_docs):
            n = int(rng.lognormvariate(3.5, 1.0)) + 5  # words: many short documents, a long tail
            text = " ".join(rng.choice(WORDS) for _ in range(min(n, 20000)))
            out.write(json.dumps({"text": text, "meta": {"pile_set_name": DOMAINS[i % len(DOMAINS)]}}) + "\n")
        out.flush()


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--corpus", type=Path, default=Path("/tmp/lossgap-soak.jsonl.zst"))
    p.add_argument("--seq-len", type=int, default=4096)
    a = p.parse_args(argv)
    if not a.corpus.exists():
        t = time.perf_counter()
        write_corpus(a.corpus, a.docs)
        print(f"wrote {a.corpus} ({a.corpus.stat().st_size / 2**20:.0f} MiB, {a.docs:,} documents) "
              f"in {time.perf_counter() - t:.0f} s")
    tok = tokenizer()
    corpus = Corpus(CorpusConfig(str(a.corpus)))
    docs = encode_documents(corpus, tok, SpecialTokens(None, tok.eos_token_id), len(tok))
    start, n_docs, n_tokens, samples = time.perf_counter(), 0, 0, []
    print(f"{'documents':>10} {'tokens':>12} {'RSS MiB':>8} {'docs/s':>8}")
    for rows in windows(make_rows(docs, LayoutConfig("packed", a.seq_len)), 1 << 16):
        for row in rows:
            for seg in row.segments:
                n_docs += seg.start == 0
                n_tokens += seg.length
        if not samples or n_docs - samples[-1][0] >= max(1, a.docs // 10):
            samples.append((n_docs, rss_mb()))
            print(f"{n_docs:10,} {n_tokens:12,} {samples[-1][1]:8.0f} {n_docs / (time.perf_counter() - start):8,.0f}",
                  flush=True)
    elapsed = time.perf_counter() - start
    print(f"{n_docs:,} documents, {n_tokens:,} tokens in {elapsed:.0f} s; RSS {samples[0][1]:.0f} -> "
          f"{rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
