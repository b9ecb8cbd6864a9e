"""Per-token and per-document results on disk (Parquet), written as scoring goes so finished work survives errors."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOKENS_FILE = "tokens.parquet"
DOCUMENTS_FILE = "documents.parquet"
SUMMARY_FILE = "summary.json"
PARTIAL_SUFFIX = ".partial"
RUN_FILES = (TOKENS_FILE, DOCUMENTS_FILE, SUMMARY_FILE, TOKENS_FILE + PARTIAL_SUFFIX, "shards")

TOKEN_SCHEMA = pa.schema(
    [
        ("doc_id", pa.int64()),
        ("domain", pa.dictionary(pa.int32(), pa.string())),
        ("pos", pa.int32()),
        ("target", pa.int32()),
        ("nll", pa.float32()),
        ("truncated", pa.bool_()),
    ]
)


def token_table(doc_ids: np.ndarray, domains: list[str], pos, target, nll, truncated) -> pa.Table:
    """Scored tokens as an Arrow table with the tokens.parquet schema."""
    return pa.table(
        {
            "doc_id": pa.array(doc_ids, pa.int64()),
            "domain": pa.array(domains, pa.string()).dictionary_encode(),
            "pos": pa.array(pos, pa.int32()),
            "target": pa.array(target, pa.int32()),
            "nll": pa.array(nll, pa.float32()),
            "truncated": pa.array(truncated, pa.bool_()),
        },
        schema=TOKEN_SCHEMA,
    )


class TokenWriter:
    """Streams scored tokens into tokens.parquet.partial; close(complete=True) renames it to tokens.parquet."""

    def __init__(self, out_dir: Path, metadata: dict):
        self.final_path = out_dir / TOKENS_FILE
        self.path = out_dir / (TOKENS_FILE + PARTIAL_SUFFIX)
        schema = TOKEN_SCHEMA.with_metadata({b"lossgap": json.dumps(metadata).encode()})
        self.writer = pq.ParquetWriter(self.path, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self, complete: bool) -> Path:
        """Close the file (it stays a valid Parquet file either way) and name it by whether the run finished."""
        self.writer.close()
        if complete:
            os.replace(self.path, self.final_path)
            return self.final_path
        return self.path


@dataclass(frozen=True)
class DocumentInfo:
    """What the documents table needs of a document: not its token ids, so memory stays small on a big corpus."""

    domain: str
    source: str
    n_input_tokens: int
    n_bytes: int


class DocumentTable:
    """Per-document sums, accumulated batch by batch (a packed document can span several batches). Tables of the
    same documents (one per label offset of a run) may share one `docs` registry and keep their own sums."""

    def __init__(self, docs: dict[int, DocumentInfo] | None = None):
        self.docs: dict[int, DocumentInfo] = {} if docs is None else docs
        self.n_tokens: dict[int, int] = {}
        self.nll_sum: dict[int, float] = {}
        self.truncated: dict[int, int] = {}

    def register(self, docs) -> None:
        """Remember documents (a dict by id, or any iterable of TokenizedDocument) on first sight."""
        for doc in docs.values() if isinstance(docs, dict) else docs:
            if doc.doc_id not in self.docs:
                self.docs[doc.doc_id] = DocumentInfo(sys.intern(doc.domain), doc.source, len(doc.ids), doc.n_bytes)

    def add(self, doc_ids: np.ndarray, nll: np.ndarray, truncated: np.ndarray) -> None:
        if doc_ids.size == 0:
            return
        uniq, inv = np.unique(doc_ids, return_inverse=True)
        sums = np.bincount(inv, weights=nll.astype(np.float64))
        counts = np.bincount(inv)
        trunc = np.bincount(inv, weights=truncated.astype(np.float64))
        for i, doc_id in enumerate(uniq.tolist()):
            self.n_tokens[doc_id] = self.n_tokens.get(doc_id, 0) + int(counts[i])
            self.nll_sum[doc_id] = self.nll_sum.get(doc_id, 0.0) + float(sums[i])
            self.truncated[doc_id] = self.truncated.get(doc_id, 0) + int(trunc[i])

    def to_arrow(self) -> pa.Table:
        ids = sorted(self.docs)
        return pa.table(
            {
                "doc_id": pa.array(ids, pa.int64()),
                "domain": pa.array([self.docs[i].domain for i in ids], pa.string()),
                "source": pa.array([self.docs[i].source for i in ids], pa.string()),
                "n_input_tokens": pa.array([self.docs[i].n_input_tokens for i in ids], pa.int64()),
                "n_tokens": pa.array([self.n_tokens.get(i, 0) for i in ids], pa.int64()),
                "n_bytes": pa.array([self.docs[i].n_bytes for i in ids], pa.int64()),
                "nll_sum": pa.array([self.nll_sum.get(i, 0.0) for i in ids], pa.float64()),
                "truncated_context_tokens": pa.array([self.truncated.get(i, 0) for i in ids], pa.int64()),
            }
        )


def write_documents(out_dir: Path, table: pa.Table, metadata: dict) -> Path:
    path = out_dir / DOCUMENTS_FILE
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    pq.write_table(table.replace_schema_metadata({b"lossgap": json.dumps(metadata).encode()}), tmp)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: dict) -> Path:
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def existing_run_files(out_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (out_dir / name).exists()]
