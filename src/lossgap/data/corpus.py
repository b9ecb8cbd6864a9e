"""Corpus readers: stream Documents from JSONL (plain, gzip, zstd), Parquet, `datasets` folders, text folders.

Every record gets a stable `doc_id`: its ordinal in the corpus (bad records and skipped records count too), so
the same document has the same id whatever `--skip`, `--sample` or `--on-bad-line` select.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import io
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CorpusConfig
from ..errors import CorpusError

JSONL_SUFFIXES = (
    ".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".jsonl.zstd", ".json.zst", ".json.zstd",
)
TEXT_SUFFIXES = (".txt", ".md")
SIDECAR_SUFFIX = ".sources.json"  # written beside a corpus by `lossgap corpus build`: not a corpus itself


@dataclass
class Document:
    """One document of the corpus, as read from disk."""

    doc_id: int
    text: str
    domain: str
    source: str


@dataclass
class _Record:
    """A raw record before validation: a JSON line's bytes, a table row's dict, or a text file's bytes."""

    index: int
    source: str
    payload: object
    default_domain: str


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
        self.kind, self.files = _detect(self.path)

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

    def _records(self) -> Iterator[_Record]:
        readers = {"jsonl": _jsonl_records, "parquet": _parquet_records, "text": _text_records}
        if self.kind == "datasets":
            yield from _datasets_records(self, self.path)
            self._fraction = 1.0
            return
        total = sum(f.stat().st_size for f in self.files) or 1
        done = 0
        index = 0
        for file in self.files:
            size = file.stat().st_size
            for record, position in readers[self.kind](file, index, self.path):
                self._fraction = min(1.0, (done + position) / total)
                index = record.index + 1
                yield record
            done += size
            self._fraction = done / total
        self._fraction = 1.0

    def _to_document(self, record: _Record) -> Document:
        payload = record.payload
        if isinstance(payload, bytes):
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _BadRecord(f"invalid UTF-8 at byte {e.start}") from None
            if self.kind == "text":
                return _checked(record, text, record.default_domain)
            try:
                payload = json.loads(text)
            except json.JSONDecodeError as e:
                raise _BadRecord(f"not valid JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # e.g. an integer over 4300 digits, or nesting too deep
                raise _BadRecord(f"not readable JSON ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(payload, dict):
            raise _BadRecord(f"expected a JSON object, got {type(payload).__name__}")
        text = _lookup(payload, self.config.text_field)
        if text is _MISSING:
            fields = ", ".join(sorted(payload)) or "none"
            raise _BadRecord(f"no field {self.config.text_field!r} (fields: {fields}); set --text-field")
        if not isinstance(text, str):
            raise _BadRecord(f"field {self.config.text_field!r} is a {type(text).__name__}, not a string")
        domain = _lookup(payload, self.config.domain_field)
        domain = record.default_domain if domain is _MISSING or domain is None else str(domain)
        return _checked(record, text, domain)


class _BadRecord(Exception):
    pass


_MISSING = object()


def _checked(record: _Record, text: str, domain: str) -> Document:
    if not text.strip():
        raise _BadRecord("empty document")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON escapes such as "\ud800" decode to lone surrogates
        raise _BadRecord(f"text holds a lone surrogate at character {e.start} (not valid Unicode)") from None
    return Document(doc_id=record.index, text=text, domain=domain, source=record.source)


def _lookup(obj: dict, dotted: str):
    """Dotted access: 'meta.pile_set_name' -> obj['meta']['pile_set_name'], or a flat key of that name."""
    if isinstance(obj, dict) and dotted in obj:
        return obj[dotted]
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _detect(path: Path) -> tuple[str, list[Path]]:
    if path.is_file():
        name = path.name.lower()
        if name.endswith(JSONL_SUFFIXES):
            return "jsonl", [path]
        if name.endswith(".parquet"):
            return "parquet", [path]
        if name.endswith(TEXT_SUFFIXES):
            return "text", [path]
        raise CorpusError(
            f"{path}: unknown corpus format",
            "use .jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt/.md, a folder of those, or a datasets folder",
        )
    if any((path / marker).exists() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
        return "datasets", []
    for kind, suffixes in (("parquet", (".parquet",)), ("jsonl", JSONL_SUFFIXES), ("text", TEXT_SUFFIXES)):
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)
                       and not p.name.endswith(SIDECAR_SUFFIX))
        if files:
            return kind, files
    raise CorpusError(
        f"{path}: folder holds no .jsonl, .parquet, .txt or .md files and no saved dataset",
        "point --corpus at a corpus file, a folder of them, or a folder written by Dataset.save_to_disk",
    )


def _open_binary(path: Path) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
    """Return (decompressed stream, raw file): the raw file's position drives progress."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdFrames(raw), buffer_size=1 << 20), raw
    return raw, raw


def _zstd_error() -> type[Exception]:
    """zstandard's error type, imported only when needed (GPU images often lack the package)."""
    try:
        import zstandard
    except ImportError:
        return OSError
    return zstandard.ZstdError


class _ZstdFrames(io.RawIOBase):
    """Decompress a zstd stream of one or more frames, raising EOFError when the input ends inside a frame.

    zstandard's own stream_reader returns end-of-file on a truncated frame without an error, which would
    silently drop the end of a damaged download.
    """

    def __init__(self, raw: io.BufferedIOBase, chunk_size: int = 1 << 16):
        self._raw = raw
        self._chunk_size = chunk_size
        self._frame = None  # decompressor of the frame in progress, None between frames
        self._out = memoryview(b"")  # decompressed bytes not yet returned
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out and not self._done:
            self._decompress_more()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress_more(self) -> None:
        data = self._raw.read(self._chunk_size)
        if not data:
            if self._frame is not None:
                raise EOFError("the file ends inside a zstd frame")
            self._done = True
            return
        out = []
        while data:
            if self._frame is None:
                import zstandard

                self._frame = zstandard.ZstdDecompressor().decompressobj()
            out.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data = self._frame.unused_data  # the next frame starts here
            self._frame = None
        self._out = memoryview(b"".join(out))


def _jsonl_records(path: Path, first_index: int, root: Path) -> Iterator[tuple[_Record, int]]:
    stream, raw = _open_binary(path)
    index = first_index
    line_no = 0
    try:
        while True:
            try:
                line = stream.readline()
            except (EOFError, OSError, zlib.error, _zstd_error()) as e:
                raise CorpusError(
                    f"{path}:{line_no + 1}: compressed data is corrupt or truncated ({e})",
                    f"re-download or re-compress the file; the records on lines 1-{line_no} were read",
                ) from None
            if not line:
                return
            line_no += 1
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte order mark, as some Windows tools write
            if not line.strip():
                continue
            record = _Record(index, f"{path}:{line_no}", line.rstrip(b"\r\n"), _default_domain(path))
            index += 1
            yield record, raw.tell()
    finally:
        stream.close()
        raw.close()


def _parquet_records(path: Path, first_index: int, root: Path) -> Iterator[tuple[_Record, int]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    size = path.stat().st_size
    n_rows = max(1, table.metadata.num_rows)
    index = first_index
    row_no = 0
    batches = table.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:
            raise CorpusError(
                f"{path}#row{row_no}: Parquet data is corrupt ({e})",
                f"re-download or re-write the file; rows before row {row_no} were read",
            ) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield _Record(index, f"{path}#row{row_no}", row, _default_domain(path)), size * row_no // n_rows
            index += 1
            row_no += 1


def _text_records(path: Path, first_index: int, root: Path) -> Iterator[tuple[_Record, int]]:
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    domain = rel.parts[0] if len(rel.parts) > 1 else (root.name if root.is_dir() else path.stem)
    yield _Record(first_index, str(path), path.read_bytes(), domain), path.stat().st_size


def _datasets_records(corpus: Corpus, path: Path) -> Iterator[_Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise CorpusError(f"{path}: not a readable saved dataset ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = corpus.config.split
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            what = "choose a split" if split is None else f"no split {split!r}"
            raise CorpusError(f"{path}: {what} (has {', '.join(ds)})", f"pass --split {next(iter(ds))}")
        ds = ds[split]
    n = max(1, len(ds))
    for i, row in enumerate(ds):
        corpus._fraction = i / n
        yield _Record(i, f"{path}#row{i}", row, path.name)


def _default_domain(path: Path) -> str:
    name = path.name
    for suffix in sorted(JSONL_SUFFIXES + (".parquet",), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


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
