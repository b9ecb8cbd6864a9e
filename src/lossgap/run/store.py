"""Per-token and per-document results on disk (Parquet), written as scoring goes so finished work survives errors."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorpusError, UsageError
from ..formats.columns import AGGREGATED, TOKEN_SCHEMA, document_sums
from ..formats.files import atomic_path, new_temporary, refuse_links, writable_dir
from ..formats.paths import RunFiles


class TokenWriter:
    """Streams scored tokens into a new temporary file beside tokens.parquet (files.py: never through a link, never
    shared with another process); close() names it tokens.parquet, or tokens.parquet.partial for a run that stopped
    early. Used as a context manager, a failed merge (a full disk) removes the temporary and leaves the rest as it
    was."""

    def __init__(self, files: RunFiles, metadata: dict):
        self.final_path = files.tokens
        self.partial_path = files.partial_tokens
        self.tmp = new_temporary(files.tokens)
        schema = TOKEN_SCHEMA.with_metadata({b"lossgap": json.dumps(metadata).encode()})
        try:
            self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:
            self.discard()

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self, complete: bool) -> Path:
        """Close the file (it stays a valid Parquet file either way) and name it by whether the run finished; a
        finished run's tokens replace an interrupted one's tokens.parquet.partial."""
        self.writer.close()
        path = self.final_path if complete else self.partial_path
        os.replace(self.tmp, path)
        if complete:
            self.partial_path.unlink(missing_ok=True)
        return path

    def discard(self) -> None:
        """Drop the temporary file: the merge failed, the shards stay for --resume."""
        with contextlib.suppress(Exception):
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class DocumentInfo:
    """What the documents table needs of a document: not its token ids, so memory stays small on a big corpus."""

    domain: str
    source: str
    n_input_tokens: int
    n_bytes: int


class DocumentSums:
    """Per-document sums of the aggregated token columns (columns.py), accumulated batch by batch (a packed document
    can span several batches), written as documents.parquet (read back by analysis/documents.py's RunDocuments).
    Sums of the same documents (one per label offset of a run) may share one `docs` registry and keep their own
    sums."""

    def __init__(self, docs: dict[int, DocumentInfo] | None = None):
        self.docs: dict[int, DocumentInfo] = {} if docs is None else docs
        self.n_tokens: dict[int, int] = {}
        self.sums: dict[str, dict[int, float]] = {c.per_document: {} for c in AGGREGATED}

    def register(self, docs) -> None:
        """Remember documents (a dict by id, or any iterable of TokenizedDocument) on first sight."""
        for doc in docs.values() if isinstance(docs, dict) else docs:
            if doc.doc_id not in self.docs:
                self.docs[doc.doc_id] = DocumentInfo(sys.intern(doc.domain), doc.source, len(doc.ids), doc.n_bytes)

    def add(self, tokens: pa.Table) -> None:
        """Add the scored tokens of a table with the tokens.parquet schema."""
        doc_ids = tokens.column("doc_id").to_numpy()
        if doc_ids.size == 0:
            return
        uniq, inv = np.unique(doc_ids, return_inverse=True)
        counts = np.bincount(inv)
        sums = document_sums(inv, uniq.size, tokens)
        for i, doc_id in enumerate(uniq.tolist()):
            self.n_tokens[doc_id] = self.n_tokens.get(doc_id, 0) + int(counts[i])
            for c in AGGREGATED:
                acc, cast = self.sums[c.per_document], int if c.sum_arrow == pa.int64() else float
                acc[doc_id] = acc.get(doc_id, 0) + cast(sums[c.per_document][i])

    def to_arrow(self) -> pa.Table:
        ids = sorted(self.docs)
        columns = {
            "doc_id": pa.array(ids, pa.int64()),
            "domain": pa.array([self.docs[i].domain for i in ids], pa.string()),
            "source": pa.array([self.docs[i].source for i in ids], pa.string()),
            "n_input_tokens": pa.array([self.docs[i].n_input_tokens for i in ids], pa.int64()),
            "n_tokens": pa.array([self.n_tokens.get(i, 0) for i in ids], pa.int64()),
            "n_bytes": pa.array([self.docs[i].n_bytes for i in ids], pa.int64()),
        }
        for c in AGGREGATED:
            acc, zero = self.sums[c.per_document], 0 if c.sum_arrow == pa.int64() else 0.0
            columns[c.per_document] = pa.array([acc.get(i, zero) for i in ids], c.sum_arrow)
        return pa.table(columns)


def write_documents(files: RunFiles, table: pa.Table, metadata: dict) -> Path:
    path = files.documents
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata({b"lossgap": json.dumps(metadata).encode()}), tmp)
    return path


def require_targets(documents: pa.Table, k: int, corpus: str, tokens_path: Path | None) -> None:
    """Refuse a finished run in which no document had a target under label offset k (all too short): its summary
    would be a NaN loss over 0 tokens. The empty tokens file goes; the documents too short are counted in the summary
    either way (n_documents - n_scored_documents). tokens_path None: the run did not finish, nothing to refuse."""
    n_tokens = documents.column("n_tokens").to_numpy()
    if tokens_path is None or n_tokens.sum() > 0:
        return
    tokens_path.unlink(missing_ok=True)
    raise CorpusError(
        f"{corpus}: nothing to score: none of its {n_tokens.size} documents is long enough to have a target under "
        f"label offset {k} (each has at most {k} token(s), BOS and EOS included)",
        f"score longer documents: label offset {k} needs {k + 1} tokens a document (keep --bos/--eos on: they count)",
    )


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix runs (an output folder holding a previous run needs --overwrite) and refuse, before any model
    loads or anything is deleted, a folder that cannot be created or written, or that is or holds a symbolic link
    where lossgap writes."""
    refuse_links(out_dir, RunFiles(out_dir).owned())
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder", "choose another --out: a folder")
    found = RunFiles(out_dir).existing()
    if found and not overwrite:
        raise UsageError(
            f"--out {out_dir} already holds a run ({', '.join(found)})",
            "choose another --out, or pass --overwrite to replace those files",
        )
    writable_dir(out_dir)
