"""The files of a corpus and their raw records: which files a corpus path holds (and which it does not read), and
one reader per format (JSON lines plain, gzip or zstd; Parquet; text files; a `datasets` folder).

A folder is read whole: every JSON-lines and Parquet file under it, in one order (sorted by path, whatever the
format). Text files (.txt, .md) are documents only in a folder without JSON-lines or Parquet files (beside them they
are notes such as a README). Every other file is named in a warning, never dropped silently.
"""

from __future__ import annotations

import codecs
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorpusError

JSONL_SUFFIXES = (
    ".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".jsonl.zstd", ".json.zst", ".json.zstd",
)
TEXT_SUFFIXES = (".txt", ".md")
FORMATS = {"jsonl": JSONL_SUFFIXES, "parquet": (".parquet",), "text": TEXT_SUFFIXES}
RECORD_FORMATS = ("jsonl", "parquet")  # files of records; text files are one document each
SIDECAR_SUFFIX = ".sources.json"  # written beside a corpus by `lossgap corpus build`: not a corpus itself
DATASETS_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
TEXT_BESIDE_RECORDS = ".txt/.md files are documents only in a folder without .jsonl or .parquet files"


@dataclass
class Record:
    """A raw record before validation: a JSON line's bytes, a table row's dict, or a text file's bytes."""

    index: int
    source: str
    payload: object
    default_domain: str
    text_file: bool = False  # the payload is a text file's content (one document), not a JSON line
    complete: bool = True  # False: a text file's first bytes only (read under --max-tokens)


@dataclass
class Listing:
    """What a corpus path holds: the files read, each with its format, in reading order, and the files not read."""

    files: list[tuple[Path, str]]
    not_read: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    datasets: bool = False  # a folder written by Dataset.save_to_disk: read by `datasets`, not file by file

    def warning(self, folder: Path, shown: int = 5) -> str | None:
        """One line naming the files not read (the first `shown`, then a count), or None."""
        if not self.not_read:
            return None
        names = [f"{p.relative_to(folder)} ({why})" for p, why in self.not_read[:shown]]
        more = len(self.not_read) - shown
        listed = "; ".join(names) + (f"; and {more:,} more" if more > 0 else "")
        return f"{folder}: {len(self.not_read):,} file(s) not read: {listed}"


def format_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(SIDECAR_SUFFIX):
        return None
    return next((kind for kind, suffixes in FORMATS.items() if name.endswith(suffixes)), None)


def list_corpus(path: Path) -> Listing:
    """The files of a corpus file or folder; refuse a path with nothing to read."""
    if path.is_file():
        kind = format_of(path)
        if kind is None:
            raise CorpusError(
                f"{path}: unknown corpus format",
                "use .jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt/.md, a folder of those, or a datasets folder",
            )
        return Listing([(path, kind)])
    if any((path / marker).exists() for marker in DATASETS_MARKERS):
        return Listing([], datasets=True)
    found = sorted(p for p in path.rglob("*") if p.is_file())
    kinds = {p: format_of(p) for p in found}
    records = any(kind in RECORD_FORMATS for kind in kinds.values())
    listing = Listing([])
    for p in found:
        kind = kinds[p]
        if kind is None and not p.name.endswith(SIDECAR_SUFFIX):
            listing.not_read.append((p, "not a corpus format"))
        elif kind == "text" and records:
            listing.not_read.append((p, TEXT_BESIDE_RECORDS))
        elif kind is not None:
            listing.files.append((p, kind))
    if not listing.files:
        raise CorpusError(
            f"{path}: folder holds no .jsonl, .parquet, .txt or .md files and no saved dataset",
            "point --corpus at a corpus file, a folder of them, or a folder written by Dataset.save_to_disk",
        )
    return listing


def _open_binary(path: Path) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
    """Return (decompressed stream, raw file): the raw file's position drives progress."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(ZstdFrames(raw), buffer_size=1 << 20), raw
    return raw, raw


def _zstd_error() -> type[Exception]:
    """zstandard's error type, imported only when needed (GPU images often lack the package)."""
    try:
        import zstandard
    except ImportError:
        return OSError
    return zstandard.ZstdError


class ZstdFrames(io.RawIOBase):
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


def read_so_far(unit: str, first: int, count: int) -> str:
    """What was read of a damaged file, in words that also hold when nothing was: 'lines 1-7 were read'."""
    if count == 0:
        return f"none of its {unit}s could be read"
    return f"{unit} {first} was read" if count == 1 else f"{unit}s {first}-{first + count - 1} were read"


def jsonl_records(path: Path, first_index: int, root: Path, text_bytes: int | None) -> Iterator[tuple[Record, int]]:
    """One record per non-blank line. A line is held whole, however long: a JSON record must be parsed whole to
    find its text field (--max-tokens bounds the tokenization, not this)."""
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
                    f"re-download or re-compress the file; {read_so_far('line', 1, line_no)}",
                ) from None
            if not line:
                return
            line_no += 1
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte order mark, as some Windows tools write
            if not line.strip():
                continue
            # the line end stays: JSON ignores it, and a long line is not copied to drop it
            record = Record(index, f"{path}:{line_no}", line, default_domain(path))
            line = None  # the record holds the line now: once it is parsed, nothing else keeps a long one alive
            index += 1
            yield record, raw.tell()
    finally:
        stream.close()
        raw.close()


def parquet_records(path: Path, first_index: int, root: Path, text_bytes: int | None) -> Iterator[tuple[Record, int]]:
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
                f"re-download or re-write the file; {read_so_far('row', 0, row_no)}",
            ) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield Record(index, f"{path}#row{row_no}", row, default_domain(path)), size * row_no // n_rows
            index += 1
            row_no += 1


def text_records(path: Path, first_index: int, root: Path, text_bytes: int | None) -> Iterator[tuple[Record, int]]:
    """The file is one document; with `text_bytes`, only its first text_bytes bytes are read (--max-tokens)."""
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    domain = rel.parts[0] if len(rel.parts) > 1 else (root.name if root.is_dir() else path.stem)
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read() if text_bytes is None or size <= text_bytes else f.read(text_bytes)
    yield Record(first_index, str(path), data, domain, text_file=True, complete=len(data) == size), size


def decode_prefix(data: bytes) -> str:
    """The first bytes of a UTF-8 file as text: a character cut at the end is left out, invalid bytes raise."""
    return codecs.getincrementaldecoder("utf-8")().decode(data, final=False)


def datasets_records(path: Path, split: str | None, progress) -> Iterator[Record]:
    """The rows of a saved Dataset (or of one split of a DatasetDict); `progress(share)` reports the share read."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise CorpusError(f"{path}: not a readable saved dataset ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            what = "choose a split" if split is None else f"no split {split!r}"
            raise CorpusError(f"{path}: {what} (has {', '.join(ds)})", f"pass --split {next(iter(ds))}")
        ds = ds[split]
    n = max(1, len(ds))
    for i, row in enumerate(ds):
        progress(i / n)
        yield Record(i, f"{path}#row{i}", row, path.name)


def default_domain(path: Path) -> str:
    name = path.name
    for suffix in sorted(JSONL_SUFFIXES + (".parquet",), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


READERS = {"jsonl": jsonl_records, "parquet": parquet_records, "text": text_records}
