"""A seeded sample of the main configuration's rows under a budget of scored tokens, as batches of the baseline's
plan: the input of the analyses that need more of both models than the paired pass stores (the temperature fit, the
layer attribution). The rows are the pass's own (the same layout, cuts, truncation flags and targets), so a
statistic over the sample is the pass's over those rows, and with no budget (or one the corpus fits) it is the
pass's over every token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..config import ScoreConfig
from ..data.corpus import Corpus
from ..data.encode import encode_documents
from ..data.layout import Batch, Row, make_rows, windows
from ..engine.prepare import Engine
from .scoring import window_size


@dataclass
class RowSample:
    """The sampled rows' batches, and what the sample is (recorded beside every figure computed from it)."""

    batches: list[Batch] = field(repr=False)
    rows: int
    rows_seen: int
    targets: int
    documents: int
    budget: int | None
    seed: int

    @property
    def whole(self) -> bool:
        """Every row of the corpus is in the sample."""
        return self.rows == self.rows_seen

    def describe(self) -> dict:
        return {"rows": self.rows, "rows_in_corpus": self.rows_seen, "tokens": self.targets,
                "documents": self.documents, "token_budget": self.budget, "seed": self.seed, "whole": self.whole}


def row_targets(row: Row) -> int:
    """The targets a row's segments score."""
    return sum(seg.target_hi - seg.target_lo for seg in row.segments)


def sample_rows(cfg: ScoreConfig, engine: Engine, corpus: Corpus, total_targets: int, budget: int | None,
                seed: int) -> RowSample:
    """Rows of cfg's layout drawn with probability budget/total_targets each (all of them with no budget or a budget
    of at least `total_targets`), in corpus order, stopping once the budget is reached; collated by the engine's plan
    window by window, as a scoring pass batches them (so a whole sample's batches are the pass's own). Only the
    sampled rows are kept in memory."""
    share = 1.0 if budget is None or budget >= total_targets else budget / max(total_targets, 1)
    rng = np.random.default_rng(seed)
    batches: list[Batch] = []
    seen = targets = taken = 0
    docs: set[int] = set()
    for window in _windows(cfg, engine, corpus):
        kept = []
        for row in window:
            seen += 1
            if (budget is None or targets < budget) and (share >= 1.0 or rng.random() < share):
                kept.append(row)
                targets += row_targets(row)
                docs.update(seg.doc.doc_id for seg in row.segments if seg.target_hi > seg.target_lo)
        taken += len(kept)
        batches += [engine.plan.collate(group) for group in engine.plan.groups(kept)] if kept else []
    return RowSample(batches, taken, seen, targets, len(docs), budget, seed)


def _windows(cfg: ScoreConfig, engine: Engine, corpus: Corpus) -> Iterator[list[Row]]:
    docs = encode_documents(iter(Corpus(corpus.config)), engine.tokenizer, engine.special, engine.loaded.vocab_size,
                            cfg.corpus.max_tokens, prefix=engine.prefix, end_of_turn=engine.end_of_turn)
    yield from windows(make_rows(docs, cfg.layout), window_size(cfg, engine))
