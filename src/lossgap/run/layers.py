"""--layers: which weights carry the gap of a fine-tuned pair, measured right after its paired pass while both models
are resident. On a seeded sample of the main configuration's rows (run/sample.py) the baseline's plan and head score
hybrids built inside the baseline's model (engine/hybrid.py): the interpolation path θ_b + α(θ_o − θ_b), each block
taken alone from the other model, each block kept alone from the baseline; the logit lens (engine/lens.py) on the
first tokens of the sample. Stored per document (pairs/<other>.layers.parquet) with the weight change and the plan
of passes (pairs/<other>.layers.json); analysis/layers.py turns them into D per hybrid with intervals.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ScoreConfig
from ..engine import forward, hybrid, lens, prefix
from ..formats.columns import stored_names
from ..formats.files import atomic_path, write_json
from ..formats.paths import ComparisonFolder, read_parquet
from .paired import PairedResult
from .sample import RowSample, sample_rows

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # points of the interpolation path; 0 and 1 check the pair's own losses
LENS_TOKENS = 2048  # scored tokens of the sample the logit lens reads (a full distribution per layer and model)
KEPT_BYTES = 2 << 30  # at most this much of both models' kept residual streams (fewer boundaries past it)


@dataclass(frozen=True)
class LayerSettings:
    tokens: int | None  # scored tokens the sample holds at most (None: every token of the main configuration)
    groups: int  # contiguous groups the decoder layers are split into
    seed: int
    bisect: int = 0  # forward passes for bisecting the group of layers that carries most of D (two per step)


@dataclass(frozen=True)
class Hybrid:
    """One model scored on the sample: its column in the sums table, what it is, and how to build it."""

    column: str
    kind: str  # "alpha", "only" (the block from the other model, the rest baseline), "kept" (the reverse)
    value: float | str
    build: Callable
    taken: frozenset[str] | None = None  # a swap's parameters from the other model (None: every one interpolated)


@dataclass
class KeptStates:
    """Both models' residual streams entering a few decoder layers (the blocks' first layers, and the end), per
    sample batch, kept from the interpolation's ends, so that a hybrid whose first layers are one model's resumes
    there (engine/prefix.py); and how much decoder work that saved."""

    boundaries: tuple[int, ...]
    n_layers: int
    states: dict[str, dict[int, list]] = field(default_factory=lambda: {"base": {}, "other": {}})
    reads: list[set[str]] = field(default_factory=list)  # the parameters read before each layer (α = 0's pass)
    layers_run: int = 0  # decoder layers run per batch, summed over the passes
    layers_full: int = 0  # the same without resuming

    def start(self, h: Hybrid, n_batches: int) -> tuple[str | None, int]:
        """The model and boundary hybrid h resumes from (None, 0: from the embeddings)."""
        if h.taken is None or len(self.reads) != self.n_layers + 1:
            return None, 0
        source, k = prefix.shared_prefix(self.reads, h.taken)
        ready = [b for b in self.boundaries if b <= k and len(self.states.get(source, {}).get(b, ())) == n_batches]
        return (source, max(ready)) if ready else (None, 0)

    def nbytes(self) -> int:
        return sum(t.nbytes for by in self.states.values() for kept in by.values() for t in kept)


def hybrids(base, other, head, parts: list[hybrid.Block]) -> list[Hybrid]:
    """The interpolation points, then per block the block alone from the other model and alone kept from the
    baseline."""
    everything = tuple(hybrid.parameters(base))
    out = [Hybrid(f"alpha_{a:g}", "alpha", a, lambda a=a: hybrid.interpolated(base, other, a, head)) for a in ALPHAS]
    for i, block in enumerate(parts):
        own = set(block.params)
        rest = tuple(n for n in everything if n not in own)
        out.append(_swap(f"only_{i}", "only", block.name, base, other, block.params))
        out.append(_swap(f"kept_{i}", "kept", block.name, base, other, rest))
    return out


def _swap(column: str, kind: str, value: str, base, other, taken: tuple[str, ...]) -> Hybrid:
    return Hybrid(column, kind, value, lambda: hybrid.swapped(base, other, taken), frozenset(taken))


def kept_states(model, parts: list[hybrid.Block], sample: RowSample) -> KeptStates:
    """Where the passes may resume: the first layer of each group of layers after the first, and the end of the
    decoder, as many (from the end) as KEPT_BYTES allows for both models; none for a model that cannot resume."""
    n = model.config.num_hidden_layers
    bounds = sorted({b.layers[0] for b in parts if b.layers and b.layers[0] > 0} | {n}) if prefix.can_resume(model) \
        else []
    per_boundary = 2 * sum(b.input_ids.numel() for b in sample.batches) * model.config.hidden_size * \
        next(model.parameters()).element_size()
    while bounds and len(bounds) * per_boundary > KEPT_BYTES:
        bounds.pop(0)
    return KeptStates(tuple(bounds), n)


def layer_attribution(cfg: ScoreConfig, names: tuple[str, str], paired: PairedResult, folder: ComparisonFolder,
                      settings: LayerSettings, quiet: bool = False) -> dict:
    """Measure, store and return the record of the pair's layer attribution (what compare.json keeps)."""
    started = time.perf_counter()
    base_e, other_e = paired.engines
    base, other = base_e.loaded.model, other_e.loaded.model
    hybrid.require_same_shapes(base, other, names)
    total = pq.ParquetFile(paired.path).metadata.num_rows
    sample = sample_rows(cfg, base_e, paired.corpus, total, settings.tokens, settings.seed)
    parts = hybrid.blocks(base, settings.groups)
    todo = hybrids(base, other, base_e.head.proj, parts)
    n_layers = base.config.num_hidden_layers
    kept = kept_states(base, parts, sample)
    if not quiet:
        resume = f"; passes resume at layers {', '.join(map(str, kept.boundaries))} where their first layers are " \
            "one model's" if kept.boundaries else ""
        print(f"layers: {len(todo)} forward passes of {names[0]}'s model over {sample.targets} scored tokens (and up "
              f"to {settings.bisect - settings.bisect % 2} more to bisect the layers that carry most of D) "
              f"({sample.rows} of {sample.rows_seen} rows), and the logit lens of {n_layers} layers of both models "
              f"on up to {LENS_TOKENS} of them{resume}", file=sys.stderr, flush=True)
    sums, ends = _doc_sums(sample, base_e, todo, kept)
    todo += _bisect(base, other, parts, sums, sample, base_e, settings.bisect, kept)
    kept_bytes = kept.nbytes()
    kept.states.clear()
    lens_sums, lens_tokens = _lens_sums(sample, base_e, other_e)
    check = _check(paired, names, sample, ends)
    table = _table(sums, lens_sums)
    with atomic_path(folder.layer_sums(names[1])) as tmp:
        pq.write_table(table, tmp)
    params = hybrid.parameters(base)
    record = {"models": list(names), "sample": sample.describe(), "alphas": list(ALPHAS),
              "blocks": [{"name": b.name, "layers": b.layers, "params": len(b.params),
                          "numel": sum(params[p].numel() for p in b.params),
                          "only": f"only_{i}", "kept": f"kept_{i}"} for i, b in enumerate(parts)],
              "hybrids": [{"column": h.column, "kind": h.kind, "value": h.value} for h in todo],
              "weight_change": hybrid.weight_change(base, other), "n_layers": n_layers,
              "lens": {"tokens": lens_tokens, "layers": n_layers}, "check": check,
              "dtype": forward.dtype_name(base_e.plan.dtype),
              "cost": {"forward_passes": len(todo), "lens_passes": 2, "tokens_per_pass": sample.targets,
                       "decoder_layers_run": kept.layers_run, "decoder_layers_without_resuming": kept.layers_full,
                       "resume_boundaries": list(kept.boundaries), "kept_state_bytes": kept_bytes,
                       "seconds": time.perf_counter() - started},
              "sums": folder.relative(folder.layer_sums(names[1]))}
    write_json(folder.layers(names[1]), record)
    return record


def _bisect(base, other, parts: list[hybrid.Block], sums: dict, sample: RowSample, engine, passes: int,
            kept: KeptStates) -> list[Hybrid]:
    """Halve the group of decoder layers whose change alone moves D the most, score each half alone from the other
    model, and go on into the half that moves it more, while `passes` allow two more (added to `sums`)."""
    n = max(sum(sums["tokens"].values()), 1.0)

    def moved(column: str) -> float:
        return abs(sum(sums[column].values()) - sum(sums["alpha_0"].values())) / n

    groups = [(i, b) for i, b in enumerate(parts) if b.layers and b.layers[1] > b.layers[0]]
    if not groups or passes < 2:
        return []
    i, block = max(groups, key=lambda ib: moved(f"only_{ib[0]}"))
    (lo, hi), done = block.layers, []
    by_layer = {}
    for name in hybrid.parameters(base):
        by_layer.setdefault(hybrid.layer_of(name), []).append(name)
    while hi > lo and passes >= 2:
        mid = (lo + hi + 1) // 2
        halves = [_swap(f"bisect_{a}_{b}", "bisect", f"layers {a}-{b}" if b > a else f"layer {a}", base, other,
                        tuple(p for k in range(a, b + 1) for p in by_layer.get(k, [])))
                  for a, b in ((lo, mid - 1), (mid, hi))]
        found, _ = _doc_sums(sample, engine, halves, kept)
        sums.update({h.column: found[h.column] for h in halves})
        done += halves
        passes -= 2
        lo, hi = max(((lo, mid - 1), (mid, hi)), key=lambda ab: moved(f"bisect_{ab[0]}_{ab[1]}"))
    return done


def _score(engine, batch) -> np.ndarray:
    return forward.forward_batches(engine.plan, engine.head, [batch])[0]["nll"].astype(np.float64)


def _doc_sums(sample: RowSample, engine, todo: list[Hybrid], kept: KeptStates
              ) -> tuple[dict[str, dict[int, float]], dict]:
    """Per hybrid, per document: the summed NLL of its sampled tokens ("tokens": their count); and the per-token NLL
    of the interpolation's ends, by α, for the check against the paired pass. The ends keep both models' states at
    the boundaries in `kept`, and every later hybrid resumes from the latest its prefix allows."""
    out: dict[str, dict[int, float]] = {"tokens": {}}
    ends: dict[float, list[np.ndarray]] = {}
    model, batches = engine.plan.model, sample.batches
    for batch in batches:
        _add(out["tokens"], batch.doc_ids, np.ones(batch.doc_ids.size))
    with engine.plan.attention():
        for h in todo:
            out[h.column] = {}
            end = h.kind == "alpha" and h.value in (0.0, 1.0)
            source, boundary = kept.start(h, len(batches))
            keep = prefix.kept_states(model, kept.boundaries, kept.states["base" if h.value == 0.0 else "other"]) \
                if end and kept.boundaries else contextlib.nullcontext()
            reads = prefix.recorded_reads(model, kept.reads) if end and h.value == 0.0 and kept.boundaries \
                else contextlib.nullcontext()
            with h.build(), keep, reads:
                for i, batch in enumerate(batches):
                    with prefix.resumed(model, boundary, kept.states[source][boundary][i]) if boundary \
                            else contextlib.nullcontext():
                        nll = _score(engine, batch)
                    _add(out[h.column], batch.doc_ids, nll)
                    if end:
                        ends.setdefault(h.value, []).append(nll)
            kept.layers_run += kept.n_layers - boundary
            kept.layers_full += kept.n_layers
    return out, ends


def _lens_sums(sample: RowSample, base_e, other_e) -> tuple[dict[str, dict[int, float]], int]:
    """Per layer, per document of the lens's batches (the sample's first, up to LENS_TOKENS): summed KL(b || o) and
    each model's lens NLL; "lens_tokens": their count."""
    out: dict[str, dict[int, float]] = {"lens_tokens": {}}
    seen = 0
    with base_e.plan.attention(), other_e.plan.attention():
        for batch in sample.batches:
            if seen >= LENS_TOKENS:
                break
            stats = lens.lens_stats(base_e.plan, base_e.head, other_e.plan, other_e.head, batch)
            _add(out["lens_tokens"], batch.doc_ids, np.ones(batch.doc_ids.size))
            for key, values in stats.items():
                for layer, row in enumerate(values.numpy()):
                    _add(out.setdefault(f"lens_{key}_{layer}", {}), batch.doc_ids, row)
            seen += batch.doc_ids.size
    return out, seen


def _add(into: dict[int, float], doc_ids: np.ndarray, values: np.ndarray) -> None:
    ids, where = np.unique(doc_ids, return_inverse=True)
    for doc, total in zip(ids.tolist(), np.bincount(where, weights=values, minlength=ids.size), strict=True):
        into[doc] = into.get(doc, 0.0) + float(total)


def _table(sums: dict, lens_sums: dict) -> pa.Table:
    docs = sorted(sums["tokens"])
    columns = {"doc_id": pa.array(docs, pa.int64())}
    for key, values in {**sums, **lens_sums}.items():
        columns[key] = pa.array([values.get(d, 0.0) for d in docs], pa.float64())
    return pa.table(columns)


def _check(paired: PairedResult, names: tuple[str, str], sample: RowSample, ends: dict) -> dict:
    """The interpolation's ends against the paired pass on the same tokens: α = 0 is the baseline, α = 1 the other
    model (the largest per-token difference in NLL; D on the sample from the pair's own columns and from the ends)."""
    roles = stored_names(*names)
    pairs = read_parquet(paired.path, ["doc_id", "pos", roles["nll_b"], roles["nll_o"]])
    key = pairs["doc_id"].to_numpy().astype(np.int64) << 32 | pairs["pos"].to_numpy().astype(np.int64)
    order = np.argsort(key)
    got = [np.concatenate(ends[a]) if ends[a] else np.zeros(0) for a in (0.0, 1.0)]
    k = np.concatenate([b.doc_ids.astype(np.int64) << 32 | b.target_pos.astype(np.int64) for b in sample.batches]) \
        if sample.batches else np.zeros(0, np.int64)
    at = order[np.searchsorted(key, k, sorter=order)]
    ref = [pairs[roles[r]].to_numpy()[at].astype(np.float64) for r in ("nll_b", "nll_o")]
    n = max(k.size, 1)
    return {"max_token_diff_alpha_0": float(np.abs(got[0] - ref[0]).max(initial=0)),
            "max_token_diff_alpha_1": float(np.abs(got[1] - ref[1]).max(initial=0)),
            "d_pairs_on_sample": float((ref[1] - ref[0]).sum() / n),
            "d_ends_on_sample": float((got[1] - got[0]).sum() / n)}
