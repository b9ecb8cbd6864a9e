"""Corpus readers: stream Documents from JSONL (plain, gzip, zstd), Parquet, `datasets` folders, text folders.

Every record gets a stable `doc_id`: its ordinal in the corpus (bad records and skipped records count too), so
the same document has the same id whatever `--skip`, `--sample` or `--on-bad-line` select. Which files a folder
contributes, in which order, and each format's reader: readers.py.

A domain is a name: a string, or an integer written in decimal (so 7 and "7" name one domain). A domain field
holding anything else (an object, a list, a float, true/false) makes the record bad, naming it; a missing or null
one falls back to the file's name.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..config import CorpusConfig
from ..errors import CorpusError
from .readers import READERS, Record, datasets_records, decode_prefix, list_corpus

# Bytes of a text file read per token of --max-tokens: far more than any tokenizer's longest token, so the first
# max_tokens x TEXT_BYTES_PER_TOKEN bytes of a long text file hold more tokens than the cap can take.
TEXT_BYTES_PER_TOKEN = 1024
_warned: set[str] = set()  # folders whose files not read were named already (a comparison opens a corpus often)


@dataclass
class TokenCap:
    """--max-tokens as a pass applied it, for summary.json ("max_tokens"); filled in by encode_documents.

    `tokens` counts each document's BOS, text and EOS tokens (a chat prefix is context, not counted), so the run's
    documents hold `tokens` <= cap input tokens. The document that reaches the cap is cut there: it keeps its first
    tokens and gets no EOS (`last_document_cut`); a document that fits exactly, EOS included, is not cut. A document
    is never cut to its BOS alone (no target): when only that would fit, the pass stops at cap - 1."""

    cap: int | None
    tokens: int = 0
    documents: int = 0
    last_document_cut: bool = False

    def facts(self) -> dict | None:
        if self.cap is None:
            return None
        return {"cap": self.cap, "tokens": self.tokens, "documents": self.documents,
                "last_document_cut": self.last_document_cut}


@dataclass
class Document:
    """One document of the corpus, as read from disk."""

    doc_id: int
    text: str
    domain: str
    source: str
    complete: bool = True  # False: `text` is the document's beginning only (a long text file under --max-tokens)
    cap: TokenCap | None = field(default=None, repr=False, compare=False)  # its corpus's --max-tokens record


@dataclass
class BadRecord:
    source: str
    reason: str


@dataclass
class Corpus:
    """A corpus on disk, read as a stream of Documents with the selection options applied."""

    config: CorpusConfig
    bad_records: list[BadRecord] = field(default_factory=list)
    records_read: int = 0
    _fraction: float = 0.0

    def __post_init__(self):
        self.config.validate()
        self.path = Path(self.config.path)
        if not self.path.exists():
            raise CorpusError(f"corpus not found: {self.path}", "check the --corpus path")
        self.listing = list_corpus(self.path)
        self.files = [file for file, _ in self.listing.files]
        self.token_cap = TokenCap(self.config.max_tokens)
        warning = self.listing.warning(self.path)
        if warning and str(self.path) not in _warned:
            _warned.add(str(self.path))
            print(f"lossgap: warning: {warning}", file=sys.stderr, flush=True)

    @property
    def fraction_read(self) -> float:
        """Share of the corpus consumed so far (bytes for files, rows for tables), for progress and ETA."""
        return self._fraction

    def __iter__(self) -> Iterator[Document]:
        docs = self._valid_documents()
        if self.config.sample is not None:
            docs = _deterministic_sample(docs, self.config.sample, self.config.seed)
        try:
            # islice stops before pulling record max_docs + 1, so nothing past the limit is read or validated
            yield from itertools.islice(docs, self.config.max_docs)
        finally:
            docs.close()  # close the open file now, not at garbage collection

    def _valid_documents(self) -> Iterator[Document]:
        self.bad_records = []  # each pass over the corpus reports its own counts
        self.records_read = 0
        self._fraction = 0.0
        self.token_cap = TokenCap(self.config.max_tokens)
        for record in self._records():
            self.records_read += 1
            if record.index < self.config.skip:
                continue
            try:
                yield self._to_document(record)
            except _BadRecord as bad:
                if self.config.on_bad_line == "fail":
                    raise CorpusError(
                        f"{record.source}: {bad}",
                        "fix or remove that record, or pass --on-bad-line skip to skip bad records "
                        "(they are counted in summary.json)",
                    ) from None
                self.bad_records.append(BadRecord(record.source, str(bad)))

    def _records(self) -> Iterator[Record]:
        if self.listing.datasets:
            yield from datasets_records(self.path, self.config.split, partial(setattr, self, "_fraction"))
            self._fraction = 1.0
            return
        cap = self.config.max_tokens
        text_bytes = None if cap is None else cap * TEXT_BYTES_PER_TOKEN
        total = sum(f.stat().st_size for f in self.files) or 1
        done = 0
        index = 0
        for file, kind in self.listing.files:
            size = file.stat().st_size
            for record, position in READERS[kind](file, index, self.path, text_bytes):
                self._fraction = min(1.0, (done + position) / total)
                index = record.index + 1
                yield record
            done += size
            self._fraction = done / total
        self._fraction = 1.0

    def _to_document(self, record: Record) -> Document:
        if record.text_file:
            return self._checked(record, _text_of(record), record.default_domain)
        payload = _json_object(record) if isinstance(record.payload, bytes) else record.payload
        if not isinstance(payload, dict):
            raise _BadRecord(f"expected a JSON object, got {type(payload).__name__}")
        text = _lookup(payload, self.config.text_field)
        if text is _MISSING:
            fields = ", ".join(sorted(payload)) or "none"
            raise _BadRecord(f"no field {self.config.text_field!r} (fields: {fields}); set --text-field")
        if not isinstance(text, str):
            raise _BadRecord(f"field {self.config.text_field!r} is a {type(text).__name__}, not a string")
        return self._checked(record, text, self._domain(payload, record))

    def _domain(self, payload: dict, record: Record) -> str:
        """The record's domain name (module docstring): a string as it is, an integer in decimal."""
        value = _lookup(payload, self.config.domain_field)
        if value is _MISSING or value is None:
            return record.default_domain
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise _BadRecord(f"field {self.config.domain_field!r} is a {type(value).__name__} ({shown}), not a "
                         "string or an integer: a domain is a name (choose another --domain-field)")

    def _checked(self, record: Record, text: str, domain: str) -> Document:
        if not text.strip():
            raise _BadRecord("empty document")
        if not text.isascii():  # ASCII text is valid Unicode: no copy of a long document to check it
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON escapes such as "\ud800" decode to lone surrogates
                raise _BadRecord(f"text holds a lone surrogate at character {e.start} (not valid Unicode)") from None
        return Document(record.index, text, domain, record.source, record.complete, self.token_cap)


class _BadRecord(Exception):
    pass


_MISSING = object()


def _text_of(record: Record) -> str:
    """A text file's content (its first bytes only when the record is not complete)."""
    try:
        return record.payload.decode("utf-8") if record.complete else decode_prefix(record.payload)
    except UnicodeDecodeError as e:
        raise _BadRecord(f"invalid UTF-8 at byte {e.start}") from None


def _json_object(record: Record):
    """A JSON line parsed. Its bytes are let go once decoded, so a long line is held as bytes and text at once only
    while it is decoded."""
    data, record.payload = record.payload, None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadRecord(f"invalid UTF-8 at byte {e.start}") from None
    del data
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _BadRecord(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer over 4300 digits, or nesting too deep
        raise _BadRecord(f"not readable JSON ({type(e).__name__}: {str(e)[:200]})") from None


def _lookup(obj: dict, dotted: str):
    """Dotted access: 'meta.pile_set_name' -> obj['meta']['pile_set_name'], or a flat key of that name."""
    if isinstance(obj, dict) and dotted in obj:
        return obj[dotted]
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _deterministic_sample(docs: Iterator[Document], n: int, seed: int) -> Iterator[Document]:
    """Keep the n documents with the smallest seeded hash of their doc_id: order-independent, one pass."""
    heap: list[tuple[int, int, Document]] = []
    for doc in docs:
        key = int.from_bytes(hashlib.blake2b(f"{seed}:{doc.doc_id}".encode(), digest_size=8).digest(), "big")
        item = (-key, doc.doc_id, doc)
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    yield from sorted((d for _, _, d in heap), key=lambda d: d.doc_id)


def require_documents(corpus: Corpus) -> None:
    """Refuse a selection without documents before any model loads: scoring it would report a NaN loss over 0
    tokens. Reads up to the first document only (all of the corpus only when it has none)."""
    docs = corpus._valid_documents()
    try:
        if next(docs, None) is not None:
            return
    finally:
        docs.close()
    c, read, bad = corpus.config, corpus.records_read, corpus.bad_records
    if read == 0:
        why, fix = "the corpus holds no records", "point --corpus at a corpus with documents (or at another --split)"
    elif c.skip >= read:
        why, fix = f"--skip {c.skip} skips all {read} of its records", f"use a --skip below {read}"
    else:
        after = f" after --skip {c.skip}" if c.skip else ""
        which = f"all {len(bad)} of its records{after} are" if len(bad) > 1 else f"its only record{after} is"
        why = f"{which} bad and skipped (first: {bad[0].source}: {bad[0].reason})"
        fix = "fix the records (run with --on-bad-line fail to stop at each), or choose another corpus"
    raise CorpusError(f"{corpus.path}: no documents to score: {why}", fix)
