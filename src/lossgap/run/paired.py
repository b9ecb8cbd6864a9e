"""The paired pass: the baseline and another model scored on the same batches in one pass over the data, both models
resident, so every target token gets both predictive distributions compared (KL both ways, top-1 agreement) and each
model's statistics (NLL, entropy, the target's probability and rank, the argmax and its probability), computed in
one pass over the vocabulary tiles (docs/design.md, contract 8); the columns are declared in formats/columns.py.
Written per window as resumable shards, then merged in document order into pairs/<other>.parquet in the comparison
folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..analysis import precision
from ..config import ScoreConfig
from ..data.corpus import Corpus
from ..data.layout import Batch
from ..engine import forward
from ..engine.dist import init_distributed
from ..engine.model import LoadedModel
from ..engine.prepare import Engine, prepare_engine
from ..errors import UsageError
from ..formats.columns import pair_columns, stored_names, token_schema
from ..formats.files import atomic_path
from ..formats.paths import ComparisonFolder, RunFiles
from ..formats.schema import SCHEMA_VERSION
from .fingerprints import corpus_fingerprint, model_fingerprint
from .runner import WindowRunner
from .scoring import Output, Pass, resume_config, run_windows, window_size, write_fault
from .shards import RUN_FIELD, ShardStore
from .store import DocumentSums


class PairRunner(WindowRunner):
    """Scores a window with both models: the rows are batched by the baseline's plan and run through both. Its
    float32 check measures the first paired batch's statistics of both models and the pair (forward.PAIR_CHECKED)."""

    def __init__(self, base: Engine, other: Engine, names: tuple[str, str], fp32_check: bool = True):
        super().__init__(base.plan, base.head, base.loaded.name, fp32_check=False)
        self.other = other
        self.names = names
        self.columns = pair_columns(*names)
        self.stored = stored_names(*names)
        self.want_fp32_check = fp32_check and any(e.plan.dtype != torch.float32 for e in (base, other))

    def forward(self, batches: list[Batch]) -> list[dict[str, np.ndarray]]:
        (batch,) = batches  # one label offset: the main configuration's
        stats = forward.forward_pair(self.plan, self.head, self.other.plan, self.other.head, batch)
        return [{self.stored[role]: values for role, values in stats.items()}]

    @contextlib.contextmanager
    def attention(self) -> Iterator[None]:
        """Both plans' attention on their models while the windows are scored."""
        with self.plan.attention(), self.other.plan.attention():
            yield

    def require_finite(self, batch: Batch, columns: dict) -> None:
        for role, name, plan in zip(("nll_b", "nll_o"), self.names, (self.plan, self.other.plan), strict=True):
            forward.require_finite_loss(columns[self.stored[role]], batch, name, plan.dtype)

    def measure_fp32(self, batch: Batch, columns: dict) -> dict | None:
        stats = {role: columns[self.stored[role]] for role in forward.PAIR_CHECKED}
        return forward.fp32_pair_deviation(self.plan, self.head, self.other.plan, self.other.head, batch, stats)

    def fp32_warning(self, k: int, check: dict) -> str:
        return f"the paired pass of {' and '.join(self.names)}: {precision.pair_check_text(check, self.names)}"


@dataclass
class PairedResult:
    path: Path
    facts: dict


def paired_pass(cfg: ScoreConfig, names: tuple[str, str], base: LoadedModel, other: LoadedModel, tokenizer,
                folder: ComparisonFolder) -> PairedResult:
    """Score cfg's configuration (one label offset) with both models on the same batches; write the comparison
    folder's pairs/<other>.parquet (rank 0) and return its path and the run's facts."""
    cfg.validate()
    if cfg.run.compile:
        raise UsageError("the paired pass does not compile its models", "drop --compile, or use --no-explain")
    dist = init_distributed(cfg.model.device)
    corpus = Corpus(cfg.corpus)
    engines = [prepare_engine(cfg, dist, loaded, tokenizer) for loaded in (base, other)]
    cfg.layout.seq_len = engines[0].seq_len
    size = min(e.plan.batch_size for e in engines)  # the same batches for both: the smaller measured size
    for e in engines:
        e.plan.batch_size = size
    work = folder.pairs_work(names[1])
    output = _open(cfg, engines, names, corpus, work, dist)
    path = folder.pairs(names[1])
    facts = finished_pairs(path, output.shards.run) if cfg.run.resume else None
    if facts is not None:  # --resume: this pass had finished with the same inputs
        if dist.main:
            output.shards.remove()
        return PairedResult(path, facts)
    runner = PairRunner(*engines, names, cfg.run.fp32_check)
    done = run_windows(cfg, engines[0], corpus, [output], dist, runner)
    facts = {**engines[0].facts(), "models": list(names), **done.facts(cfg, corpus, [output], 0.0),
             "fp32_check": done.fp32_check.get(cfg.layout.label_offset)}
    if dist.main and done.error is None:
        try:
            _merge(output, done, path, facts, runner.columns)
        except OSError as e:  # a full disk or a removed --out: the shards stay for --resume
            done.error = write_fault(e, work)
            if done.error is None:
                raise
        else:
            shutil.rmtree(work, ignore_errors=True)
    if done.error is not None:
        raise done.error
    return PairedResult(path, facts)


def _open(cfg: ScoreConfig, engines: list[Engine], names: tuple[str, str], corpus: Corpus, work: Path,
          dist) -> Output:
    """The pass's shard store (resumable: its manifest names the configuration, corpus and both models)."""
    base = engines[0]
    window_tokens = window_size(cfg, base)
    metadata = {"models": {n: e.loaded.describe() for n, e in zip(names, engines, strict=True)},
                "config": cfg.to_dict(), "plan": base.plan.name, "schema_version": SCHEMA_VERSION,
                "special_tokens": {"bos_id": base.special.bos_id, "eos_id": base.special.eos_id}}
    manifest = {"config": resume_config(cfg, base.special),
                "corpus": corpus_fingerprint(corpus.files, str(corpus.path)),
                "model": [model_fingerprint(e.loaded.name, e.loaded.describe(), e.loaded.revision) for e in engines],
                "window_tokens": window_tokens}
    if dist.main:
        work.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    shards = ShardStore(RunFiles(work), manifest, cfg.run.resume, main=dist.main)
    dist.barrier()
    return Output(cfg, metadata, shards, DocumentSums(), window_tokens)


def _merge(output: Output, done: Pass, path: Path, facts: dict, columns) -> None:
    """The finished windows, in document order, into one Parquet file written under a temporary name."""
    meta = json.dumps({**output.metadata, "facts": facts, RUN_FIELD: output.shards.run}, default=str).encode()
    schema = token_schema(columns).with_metadata({b"lossgap": meta})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for window in range(done.n_windows):
            writer.write_table(output.shards.read(window))


def finished_pairs(path: Path, run: str) -> dict | None:
    """The facts of a finished paired pass at `path` whose inputs hash to `run`, or None."""
    try:
        meta = json.loads(pq.read_schema(path).metadata[b"lossgap"])
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
        return None
    return meta.get("facts") if isinstance(meta, dict) and meta.get(RUN_FIELD) == run else None
