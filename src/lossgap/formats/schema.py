"""The schema of lossgap's JSON files: results.json, compare.json and summary.json share one version number.

results.json and compare.json stay plain JSON dicts; the TypedDicts below say what each level holds, and the
accessors are the one place the report, the plots and the findings read the shared facts (the compared models, the
unit, the main row, the order of position buckets). Cheap to import: `lossgap report` loads this without numpy,
torch or transformers.
"""

from __future__ import annotations

import math
from typing import Any, NotRequired, TypedDict

SCHEMA_VERSION = 1
# A perplexity exp(mean NLL) above the largest float (a mean NLL above 709.78 nats) is infinite. JSON has no inf, so
# every file holds it as this string; `number` reads it back. Nothing else is ever inf: other non-finite numbers
# are missing values, null in JSON.
INF = "inf"
EXP_KEYS = frozenset({"perplexity", "relative_perplexity_change", "ci_relative_perplexity_change"})

TOKENS = "tokens"  # mode: every tokenizer gives the same ids, so models are compared token by token (nats/token)
BITS_PER_BYTE = "bits_per_byte"  # mode: the tokenizers differ, so only bits per byte are comparable
ALL_POSITIONS = "all"  # the leakage bucket over every position, after the per-position ones


class ModelInfo(TypedDict):
    """results["models"][name]: what was loaded (from compare.json)."""

    spec: str  # as given on the command line
    name: str
    model_type: str
    vocab_size: int
    n_params: int
    dtype: str
    device: str
    attn_implementation: str
    max_positions: int | None


class ModelSummary(TypedDict):
    """configurations[].models[name]: one model's losses under one configuration (stats.aggregate, plus the
    near-uniform check). Every per-token column declared with summary MEAN (columns.py) adds `mean_<name>`, and
    each TOTAL column its per-document name (e.g. truncated_context_tokens)."""

    n_documents: int
    n_scored_documents: int
    n_tokens: int
    n_bytes: int
    nll_sum: float
    mean_nll: float | None  # nats/token, token-weighted
    perplexity: float | str | None  # exp(mean_nll); INF when it overflows
    bits_per_byte: float | None
    doc_mean_nll: float | None  # every scored document weighs the same
    truncated_context_tokens: int  # tokens predicted without their whole document prefix
    ln_vocab: float  # the mean NLL of a uniform guess
    near_uniform: bool  # mean_nll >= 0.75 ln(vocab): the targets are likely misaligned


class ComparisonStats(TypedDict):
    """other - baseline over one set of documents (analysis._compare); None where JSON cannot hold NaN."""

    unit: str  # "nats/token" or "bits/byte"
    n_documents: int
    n_tokens: int  # the baseline's
    base: float | None  # the baseline's mean loss in `unit`
    other: float | None
    diff: float | None  # other - base, token- (or byte-) weighted
    ci_low: float | None  # paired bootstrap 95% interval over documents
    ci_high: float | None
    doc_weighted_diff: float | None
    share_docs_worse: float | None
    wilcoxon_statistic: float | None
    wilcoxon_p: float | None
    relative_perplexity_change: NotRequired[float | str | None]  # exp(diff) - 1 (INF when it overflows); tokens mode
    ci_relative_perplexity_change: NotRequired[list[float | str | None]]  # [low, high]; tokens mode only
    diff_bits_per_byte: float | None


class ModelComparison(TypedDict):
    """configurations[].comparisons[name]: one compared model against the baseline."""

    overall: ComparisonStats
    per_domain: dict[str, ComparisonStats]  # by domain name, sorted


class ConfigurationRow(TypedDict):
    """results["configurations"][]: one scoring configuration (matrix.Configuration.to_dict) and its numbers."""

    key: str
    label_offset: int  # 1: next token; 2: the seed's doubly shifted labels
    layout: str  # "single" or "packed"
    mask: str  # "block" or "causal"
    seed_group: str  # the seed table's heading ("" outside the seed matrix)
    seed_setup: str
    seed_mask: str
    computes: str  # what the row measures, in plain words
    models: dict[str, ModelSummary]  # every model, baseline first
    comparisons: dict[str, ModelComparison]  # every model but the baseline


class LeakageBucket(TypedDict):
    """One position bucket of a leakage pair: the same tokens under the causal and the block mask."""

    bucket: str  # "1", "2", ..., "5-8", ..., ">1024", or ALL_POSITIONS
    n_tokens: int
    share_tokens: float
    mean_block: float
    mean_causal: float
    mean_diff: float  # causal - block
    mean_abs_diff: float
    share_of_abs_diff: float | None


class LeakagePair(TypedDict):
    """results["leakage"][]: a block/causal pair of packed configurations with the same label offset."""

    label_offset: int
    block: str  # configuration keys
    causal: str
    models: dict[str, list[LeakageBucket]]


class PositionBucket(TypedDict):
    bucket: str
    n_tokens: int
    mean_nll: float


class PositionProfile(TypedDict):
    """results["position_profile"]: mean NLL by target position, on the main configuration."""

    configuration: str
    models: dict[str, list[PositionBucket]]


class Histogram(TypedDict):
    edges: list[float]  # len(counts) + 1, or both empty
    counts: list[int]


class DocDifferenceHistogram(TypedDict):
    """results["doc_difference_histogram"]: per-document mean loss differences, other - baseline."""

    configuration: str
    models: dict[str, Histogram]  # every model but the baseline


class TokenizerCheck(TypedDict):
    """results["tokenizers"][name]: the model's tokenizer against the baseline's (tokcheck.compare_tokenizers)."""

    compatible: bool  # same ids on every document: token-level comparison is valid
    differences: list[str]
    special_tokens: dict[str, dict[str, str | None]]
    vocab_sizes: dict[str, int]
    documents_checked: int
    documents_tokenized_differently: int
    added_tokens_seen_in_corpus: list[str]
    verdict: str


class Fp32Limits(TypedDict):
    """How far a reduced-precision run's first batch may be from float32 before lossgap warns, in nats/token."""

    mean_abs_diff: float  # the average per-token |NLL difference|
    mean_diff: float  # |mean NLL difference|: the bias it puts on a reported mean


FP32_LIMITS: Fp32Limits = {"mean_abs_diff": 0.075, "mean_diff": 0.01}
"""The limits of the float32 check: healthy bf16 models stay below them, models with large logits do not.

mean_abs_diff 0.075: bf16 keeps 8 significant bits, so a logit near 10 is rounded by up to 0.03 and every
token's NLL carries noise of that order. Healthy bf16 models measured 0.008-0.013 (the demo pair), 0.02 (the
tests' tiny random models) and 0.03-0.044 (SmolLM2-135M) on average per token; a model with large logits measured
0.09 (max 2.07 on one token). The limit leaves SmolLM2 room (1.7x) and catches the latter; past it the per-token
columns (top spans, the token view) carry noise that is no longer bf16's ordinary rounding.
mean_diff 0.01: 1 % perplexity, a bias that does not average out over a corpus (healthy models: 0.004 at most).
The bootstrap half-width of a base/instruct difference shrinks as 1/sqrt(documents) (0.26 nats for the demo pair
on 10 documents, so about 0.01 at several thousand): on a corpus that size a larger bias moves the reported
difference by a visible share of its interval."""


class Fp32Check(TypedDict):
    """summary.json's fp32_check: the run's own NLL on the first tokens of its first batch (per label offset)
    against float32 (engine/forward.py check_slice); null in a float32 run or with --no-fp32-check."""

    dtype: str  # the run's
    tokens: int  # scored targets checked
    input_tokens: NotRequired[int]  # the input tokens scored again in float32 (the first row's first 512 or so)
    layers: NotRequired[str]  # what ran in float32 (every layer and the head)
    max_abs_diff: float  # per-token NLL, reduced precision - float32, nats
    mean_abs_diff: float
    mean_nll_diff: float  # the bias on the batch's mean NLL
    warn: NotRequired[bool]  # past FP32_LIMITS (absent in runs written before the limits)
    limits: NotRequired[Fp32Limits]


class PairFp32Check(TypedDict):
    """The paired pass's fp32_check (its facts, in pairs/<other>.parquet's metadata): the first paired batch's
    per-token statistics of both models and the pair against float32."""

    dtype: str  # the models' dtypes, "a / b" where they differ
    tokens: int
    input_tokens: NotRequired[int]
    layers: NotRequired[str]
    statistics: dict[str, dict[str, float]]  # role (nll_b, ..., kl_ob) -> max_abs_diff, mean_abs_diff, mean_diff
    warn: bool  # some statistic past FP32_LIMITS
    limits: Fp32Limits


def exceeds_fp32_limits(mean_abs_diff: float, mean_diff: float) -> bool:
    """Whether a reduced-precision statistic is farther from float32 than FP32_LIMITS allows."""
    return mean_abs_diff > FP32_LIMITS["mean_abs_diff"] or abs(mean_diff) > FP32_LIMITS["mean_diff"]


class Diagnostic(TypedDict):
    level: str  # "error", "warning" or "info"
    code: str  # e.g. "near_uniform", "mask_probe", "tokenizer", "truncated"
    where: str  # "<configuration> / <model>", or "<baseline> vs <model>"
    message: str


class Settings(TypedDict):
    bootstrap: int  # resamples
    seed: int
    corpus: dict[str, Any]  # config.CorpusConfig as a dict
    seq_len: int
    versions: dict[str, str]  # library versions


class Results(TypedDict):
    """results.json: every number of a comparison (results.build_results)."""

    schema_version: int
    baseline: str
    models: dict[str, ModelInfo]  # baseline first
    mode: str  # TOKENS or BITS_PER_BYTE
    main_configuration: str  # the key of the row the headline numbers come from
    configurations: list[ConfigurationRow]
    leakage: list[LeakagePair]
    position_profile: PositionProfile
    doc_difference_histogram: DocDifferenceHistogram
    tokenizers: dict[str, TokenizerCheck]  # every model but the baseline
    diagnostics: list[Diagnostic]
    settings: Settings
    findings: list[str]


class ExplanationManifest(TypedDict):
    """compare.json["explanation"]: what the comparison planned for the explanation before scoring
    (run/explanation_plan.py) and what it then stored, by paths relative to the comparison folder."""

    enabled: bool
    configuration: str  # the key of the configuration the paired pass and the chat-formatted runs use
    pairs: dict[str, str]  # other model -> its pairs/<other>.parquet
    skipped: dict[str, str | None]  # other model -> why it has no paired pass
    chat_runs: dict[str, str]  # other model -> its chat-formatted run folder
    chat_user_turn: str | None  # the user turn before each document (None: no chat-formatted runs)
    chat_user_turns: NotRequired[list[str]]  # every sampled user turn, chat_user_turn first (--chat-turns)
    chat_runs_by_turn: NotRequired[dict[str, list[str]]]  # other model -> its chat-formatted run per user turn
    # --chat-end-of-turn: whole documents of the chat-formatted runs end with each other model's end-of-turn token
    # (other model -> its id) in place of the EOS
    chat_end_of_turn: NotRequired[bool]
    chat_end_of_turn_ids: NotRequired[dict[str, int]]
    temperature: NotRequired[dict[str, str]]  # other model -> its pairs/<other>.temperature.json (TemperatureFile)
    memory: dict[str, Any] | None  # engine/memory.py's figures: will both models fit
    vocab: dict[str, str]  # model -> its vocab/<model>.parquet
    layers: NotRequired[dict[str, str]]  # --layers: other model -> its pairs/<other>.layers.json


class TemperatureModel(TypedDict):
    name: str
    beta: float  # 1/T, fitted by Newton's method (engine/temperature.py)
    temperature: float
    steps: int
    converged: bool
    logits_kept: bool  # False: the logits were recomputed from the hidden states at every step
    seconds: float


class TemperatureFile(TypedDict):
    """pairs/<other>.temperature.json (run/temperature.py): each model's temperature fitted on a sample of the paired
    pass's rows, and per document of the sample its scored tokens and each model's NLL sum at T = 1 and at its fitted
    T."""

    sample: dict[str, Any]  # run/sample.py RowSample.describe()
    models: dict[str, TemperatureModel]  # "baseline", "other"
    documents: dict[str, list]  # doc_id, n_tokens, nll_<role>, nll_<role>_tempered for role baseline, other
    seconds: float  # the sample's forward passes and both fits


class Manifest(TypedDict):
    """compare.json: what a comparison scored and where it stored it; results.json is built from it and the files it
    names alone (analysis/results.py)."""

    schema_version: int
    baseline: str
    models: dict[str, ModelInfo]  # baseline first
    mode: str  # TOKENS or BITS_PER_BYTE
    tokenizers: dict[str, TokenizerCheck]  # every model but the baseline
    configurations: list[dict[str, Any]]  # matrix.Configuration.to_dict
    runs: dict[str, dict[str, str]]  # configuration key -> model -> its run folder
    # each forward pass over the corpus, in order: {"models": [...], "configurations": [keys written]}; the paired
    # pass adds "pairs" (its file) and "runs_of" (the models whose runs it wrote), a chat-formatted run "chat": true
    passes: NotRequired[list[dict[str, Any]]]
    bootstrap: int  # resamples
    seed: int
    corpus: dict[str, Any]  # config.CorpusConfig as a dict
    config: dict[str, Any]  # config.CompareConfig as a dict
    versions: dict[str, str]
    elapsed_seconds: float
    explanation: NotRequired[ExplanationManifest]  # absent with --no-explain, one model, or an older comparison


# ---------------------------------------------------------------- accessors


def others(results: Results) -> list[str]:
    """The compared models: every model but the baseline, in order."""
    return [name for name in results["models"] if name != results["baseline"]]


def tokens_mode(results: Results) -> bool:
    return results["mode"] == TOKENS


def unit_of(mode: str) -> str:
    return "nats/token" if mode == TOKENS else "bits/byte"


def unit(results: Results) -> str:
    """The unit of losses and differences between models."""
    return unit_of(results["mode"])


def configuration_row(results: Results, key: str) -> ConfigurationRow | None:
    return next((row for row in results["configurations"] if row["key"] == key), None)


def main_row(results: Results) -> ConfigurationRow | None:
    """The row the headline numbers come from (None only in a hand-made results dict without it)."""
    return configuration_row(results, results["main_configuration"])


def finite(x) -> float | None:
    """x as a finite number, or None: missing values read as null in results.json, NaN or inf in memory."""
    if x is None or isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return x + 0  # -0.0 -> 0.0: an exact zero never prints with a minus sign


def number(x) -> float | None:
    """A number as lossgap's JSON holds it, as the float it stands for: INF (or inf) is inf; None, NaN and anything
    that is not a number are None."""
    if x == INF or (isinstance(x, float) and x == math.inf):
        return math.inf
    return finite(x)


def clean(obj, exp: bool = False):
    """JSON's view of the results (NaN/inf -> None, an overflowing perplexity (under EXP_KEYS) -> INF, tuples ->
    lists, numpy scalars -> Python, keys -> str), so results in memory, written and read back agree."""
    if isinstance(obj, dict):
        return {str(k): clean(v, str(k) in EXP_KEYS) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v, exp) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy scalars, without importing numpy
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return INF if exp and obj > 0 else None
    return obj


def bucket_order(row_lists) -> list[str]:
    """Bucket labels in the order they first appear in lists of rows (results list them from position 1 upwards)."""
    labels: list[str] = []
    for rows in row_lists:
        for b in rows:
            if b["bucket"] not in labels:
                labels.append(b["bucket"])
    return labels
