"""Per-token columns, declared once.

Each scored token is a row of tokens.parquet. A column is declared here with its type, unit, meaning, where its value
comes from and how it aggregates per document; everything else is derived from these declarations: the Parquet
schema, the per-document sums of documents.parquet, the fields of summary.json and results.json, and the report's
per-token statistics table. Adding a column means declaring it here and computing it where its source says
(`document`: the layout, in run/runner.py; `model`: the output head, engine/head.py). The paired pass's columns
follow the same rule, below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# how a column's per-document sum appears in a run's summary (and results.json)
LOSS = "loss"  # the loss itself: nll_sum, mean_nll, perplexity, bits per byte (analysis/stats.aggregate)
TOTAL = "total"  # the corpus-wide count, under the per-document column's name
MEAN = "mean"  # the mean per scored token, as mean_<name>


@dataclass(frozen=True)
class Column:
    name: str
    arrow: pa.DataType
    unit: str
    meaning: str
    source: str  # "key": identifies the token; "document": from the layout; "model": from the model's distribution
    per_document: str | None = None  # documents.parquet column holding the sum over the document's scored tokens
    summary: str | None = None  # LOSS, TOTAL or MEAN (None: not aggregated)

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.arrow.to_pandas_dtype()) if self.arrow != pa.string() else np.dtype(object)

    @property
    def sum_arrow(self) -> pa.DataType:
        """Type of the per-document sum: counts stay integers, everything else sums in float64."""
        return pa.int64() if pa.types.is_boolean(self.arrow) or pa.types.is_integer(self.arrow) else pa.float64()

    @property
    def summary_key(self) -> str | None:
        return {TOTAL: self.per_document, MEAN: f"mean_{self.name}"}.get(self.summary)


TOKEN_COLUMNS: tuple[Column, ...] = (
    Column("doc_id", pa.int64(), "", "the document's ordinal in the corpus (stable across selections)", "key"),
    Column("domain", pa.dictionary(pa.int32(), pa.string()), "", "the document's domain (e.g. The Pile's set name)",
           "key"),
    Column("pos", pa.int32(), "tokens", "index of the target token within its document", "key"),
    Column("target", pa.int32(), "token id", "the token being predicted", "key"),
    Column("nll", pa.float32(), "nats", "negative log-probability of the target (fp32 log-softmax)", "model",
           per_document="nll_sum", summary=LOSS),
    Column("truncated", pa.bool_(), "", "predicted without the whole document prefix (the document was cut at a row "
           "or window edge)", "document", per_document="truncated_context_tokens", summary=TOTAL),
)

BY_NAME = {c.name: c for c in TOKEN_COLUMNS}
MODEL_METRICS = tuple(c.name for c in TOKEN_COLUMNS if c.source == "model")  # what the output head computes
AGGREGATED = tuple(c for c in TOKEN_COLUMNS if c.per_document)


def token_schema(columns: tuple[Column, ...] = TOKEN_COLUMNS) -> pa.Schema:
    return pa.schema([(c.name, c.arrow) for c in columns])


TOKEN_SCHEMA = token_schema()


def token_table(values: dict[str, object], columns: tuple[Column, ...] = TOKEN_COLUMNS) -> pa.Table:
    """Scored tokens as an Arrow table with the declared schema; `values` maps each column name to its values."""
    arrays = {}
    for c in columns:
        if pa.types.is_dictionary(c.arrow):
            arrays[c.name] = pa.array(values[c.name], c.arrow.value_type).dictionary_encode()
        else:
            arrays[c.name] = pa.array(values[c.name], c.arrow)
    return pa.table(arrays, schema=token_schema(columns))


def document_sums(doc_index: np.ndarray, n_docs: int, table: pa.Table) -> dict[str, np.ndarray]:
    """Per-document sums of every aggregated column present in `table`; doc_index maps each row to 0..n_docs-1."""
    out = {}
    for c in AGGREGATED:
        if c.name in table.column_names:
            values = table.column(c.name).to_numpy(zero_copy_only=False).astype(np.float64)
            out[c.per_document] = np.bincount(doc_index, weights=values, minlength=n_docs)
    return out


# The paired pass (pairs/<other>.parquet): the baseline b and another model o on the same tokens. Each column has a
# role, its name in memory whatever the models are called (what the paired head returns and the analysis reads), and
# a stored name in the file, where {b} and {o} stand for the two models' names. Adding a paired statistic means
# declaring it here and computing it in engine/headstats.py; the pass, the file and the readers follow.
MODEL_STATS: tuple[Column, ...] = (  # each model's, as <name>_b and <name>_o
    Column("nll", pa.float32(), "nats", "negative log-probability of the target", "model"),
    Column("entropy", pa.float32(), "nats", "entropy of the predictive distribution", "model"),
    Column("p_target", pa.float32(), "probability", "probability of the target", "model"),
    Column("argmax", pa.int32(), "token id", "the top-1 prediction (ties: the lowest id)", "model"),
    Column("p_argmax", pa.float32(), "probability", "probability of the top-1 prediction", "model"),
    Column("rank", pa.int32(), "entries", "vocabulary entries with a higher logit than the target (0: top-1)",
           "model"),
    Column("p_special", pa.float32(), "probability", "probability on the tokenizers' special and added control "
           "tokens (<|im_end|>, <|endoftext|>, ...; the pass's `special_ids`), the target's included when it is one",
           "model"),
)


@dataclass(frozen=True)
class PairColumn:
    role: str  # the name in memory
    stored: str  # the name in pairs/<other>.parquet; {b}, {o}: the models' names
    arrow: pa.DataType
    unit: str
    meaning: str  # {b}, {o}: the models' names

    def column(self, base: str, other: str) -> Column:
        return Column(self.stored.format(b=base, o=other), self.arrow, self.unit,
                      self.meaning.format(b=base, o=other), "model")


PAIR_STATS: tuple[PairColumn, ...] = (  # the pair's own, comparing the two distributions
    PairColumn("kl_bo", "kl_{b}_{o}", pa.float32(), "nats", "KL({b} || {o}) of the predictive distributions"),
    PairColumn("kl_ob", "kl_{o}_{b}", pa.float32(), "nats", "KL({o} || {b})"),
    PairColumn("top1_agree", "top1_agree", pa.bool_(), "", "the two models' top-1 predictions are the same token"),
    PairColumn("p_b_argmax_o", "p_{b}_argmax_{o}", pa.float32(), "probability",
               "{b}'s probability of {o}'s top-1 prediction (how plausible the baseline found the other's choice)"),
    PairColumn("rank_b_argmax_o", "rank_{b}_argmax_{o}", pa.int8(), "entries",
               "{b}'s entries with a higher logit than {o}'s top-1 prediction, counted up to 3 (URIAL's token shift: "
               "0 unshifted, 1-2 marginal, 3 shifted: three or more above it)"),
)
PAIR_KEYS = ("doc_id", "domain", "pos", "target", "truncated")  # as in tokens.parquet


PAIR_CONTEXT = PairColumn("context", "context", pa.int32(), "tokens",
                          "tokens of its document the target was predicted from, BOS counted (its position, less what "
                          "was cut at a row or window edge; a chat prefix is not counted)")


def _pair_columns() -> tuple[PairColumn, ...]:
    keys = tuple(PairColumn(name, name, BY_NAME[name].arrow, BY_NAME[name].unit, BY_NAME[name].meaning)
                 for name in PAIR_KEYS) + (PAIR_CONTEXT,)
    per_model = tuple(PairColumn(f"{c.name}_{role}", f"{c.name}_{{{role}}}", c.arrow, c.unit,
                                 f"{{{role}}}: {c.meaning}") for role in ("b", "o") for c in MODEL_STATS)
    return keys + per_model + PAIR_STATS


PAIR_COLUMNS = _pair_columns()  # file order
# the paired pass writes each model's run as it goes: every statistic of tokens.parquet must be one of each model's
assert set(MODEL_METRICS) <= {c.name for c in MODEL_STATS}, "a tokens.parquet statistic the paired pass lacks"


def pair_columns(base: str, other: str) -> tuple[Column, ...]:
    """The columns of pairs/<other>.parquet for a baseline and another model, under their stored names."""
    return tuple(c.column(base, other) for c in PAIR_COLUMNS)


def pair_run_columns(base: str, other: str) -> tuple[Column, ...]:
    """The paired pass's table at a label offset it scores for the two models' runs only (no pair statistics): the
    keys and each model's tokens.parquet statistics, under the stored names."""
    roles = set(PAIR_KEYS) | {f"{m}_{role}" for m in MODEL_METRICS for role in ("b", "o")}
    return tuple(c.column(base, other) for c in PAIR_COLUMNS if c.role in roles)


def run_columns_in_pair(base: str, other: str, role: str) -> dict[str, str]:
    """tokens.parquet column -> the paired pass's column it is taken from, for model `role` ("b" or "o")."""
    stored = stored_names(base, other)
    return {name: stored[f"{name}_{role}"] for name in MODEL_METRICS}


def stored_names(base: str, other: str) -> dict[str, str]:
    """Role -> stored name of every column of pairs/<other>.parquet."""
    return {c.role: c.stored.format(b=base, o=other) for c in PAIR_COLUMNS}
