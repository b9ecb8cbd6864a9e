"""Statistics of the predictive distribution streamed over vocabulary tiles (docs/design.md, contracts 5 and 8).

For one model: NLL, entropy, the target's probability and rank, the argmax and its probability; for two models that
share a vocabulary, each model's statistics plus KL(b||o), KL(o||b) and top-1 agreement. Every sum is kept relative
to a running maximum m and rescaled by e^(m_old - m_new) when it moves (an online softmax), so one pass over the
tiles gives everything and no [T, V] tensor exists. With e = exp(z - m), S = sum e:

    L = m + log S        H = log S - (sum e (z - m)) / S        p(argmax) = 1 / S
    KL(b||o) = (sum e_b (z_b - z_o)) / S_b - L_b + L_o = (sum e_b ((z_b - m_b) - (z_o - m_o))) / S_b - log S_b + log S_o

the last form is the one kept, so no term of the size of a logit cancels in fp32. Each tile's exp(z - m) is computed
once and reused for every sum of its model. The tiles come from the head's one tile iterator (OutputHead.tiles); the
NLL alone takes the same stream with the NLL's larger token chunk (head.py), so every NLL lossgap computes is the same
figure bit for bit wherever the tile's matmul rounds the same (the tests pin it at equal chunks).

What each model's statistics and the pair's are is declared in formats/columns.py (MODEL_STATS, PAIR_STATS); the
paired statistics come back under their roles there (nll_b, nll_o, kl_bo, ...).
"""

from __future__ import annotations

import torch

from ..formats.columns import MODEL_STATS

METRICS = tuple(c.name for c in MODEL_STATS)  # what a stream computes for one model (LogitStream.finish)
SHIFT_CAP = 3  # the baseline's rank of the other's top-1 is counted up to this (URIAL: > 3 is a shifted token)
ARGMAX_BLOCKS = (128, 64, 32)  # entries per block of the argmax search: the largest that divides the tile


class _Buffers:
    """Tile-sized scratch reused across tiles: fresh tensors each tile cost page faults and a cold cache."""

    def __init__(self):
        self.flat: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or like.dtype
        size = like.numel()
        flat = self.flat.get((name, dtype))
        if flat is None or flat.numel() < size:
            flat = self.flat[(name, dtype)] = torch.empty(size, dtype=dtype, device=like.device)
        return flat[:size].view(like.shape)  # contiguous, so reductions add in the same order as on a fresh tensor


def _max_and_argmax(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's maximum and the first index holding it. On the CPU max-with-index runs scalar, ~10x amax: take the
    maxima of blocks of entries (vectorised), then search only the first block holding each row's maximum."""
    rows, width = z.shape
    block = next((b for b in ARGMAX_BLOCKS if width % b == 0), None)
    if z.is_cuda or block is None or not z.is_contiguous():
        return z.amax(1), z.argmax(1)  # argmax promises the first of equal maxima; max(dim) does not on CUDA
    blocks = width // block
    maxima = z.view(rows, blocks, block).amax(2)
    top, which = maxima.amax(1), maxima.argmax(1)  # argmax: the first of equal maxima
    first = torch.arange(rows, device=z.device) * blocks + which
    return top, which * block + z.view(-1, block).index_select(0, first).argmax(1)


class LogitStream:
    """One model's running sums for N tokens, all relative to its running maximum."""

    def __init__(self, head, hidden, targets, metrics, exact: bool, buffers: _Buffers, name: str = "stream"):
        self.name = name
        n, device = targets.shape[0], hidden.device
        self.head, self.hidden, self.targets, self.exact, self.buffers = head, hidden, targets, exact, buffers
        self.acc = acc = torch.float64 if exact else torch.float32
        self.lowest = torch.finfo(acc).min  # keeps an all -inf tile from giving inf - inf
        self.max = torch.full((n,), float("-inf"), dtype=acc, device=device)
        self.sum = torch.zeros(n, dtype=acc, device=device)
        self.target = torch.zeros(n, dtype=acc, device=device)
        self.xsum = torch.zeros(n, dtype=acc, device=device) if "entropy" in metrics else None
        self.arg = torch.zeros(n, dtype=torch.int64, device=device) if "argmax" in metrics else None
        self.above = torch.zeros(n, dtype=torch.int64, device=device) if "rank" in metrics else None
        self.special = torch.zeros(n, dtype=acc, device=device) if "p_special" in metrics else None
        # rank compares every tile with the target's logit, so it is needed before the pass; a projection applied
        # whole is one tile, which holds the target
        self.ref = None
        if self.above is not None and head.plain:
            self.ref = head.target_logits(hidden, targets, exact)

    def step(self, rows: slice, lo: int, hi: int, keep: bool) -> tuple | None:
        """Fold tiles lo..hi of tokens `rows` into the sums. keep: return (e, z - m, old m, new m, rescale, S before)
        for the paired sums, with e in a buffer of its own."""
        z = self.head.tile_logits(self.hidden[rows], lo, hi, self.exact)
        if z.dtype != self.acc:  # into a reused buffer: a fresh tile-sized tensor costs page faults (bf16: ~10 %)
            z = self.buffers.get(f"z{self.name}", z, self.acc).copy_(z)
        local = self.targets[rows] - lo
        inside = (local >= 0) & (local < z.shape[1])
        picked = z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None])[:, 0]
        self.target[rows] = torch.where(inside, picked, self.target[rows])
        if self.above is not None:
            self._count_above(z, rows, inside, picked)
        old = self.max[rows]
        if self.arg is not None:
            top, idx = _max_and_argmax(z)
            arg = self.arg[rows]  # a view: written in place
            arg.copy_(torch.where(top > old, idx + lo, arg))  # strict: an earlier tile (a lower id) wins a tie
        else:
            top = z.amax(1)
        new = torch.maximum(old, top).clamp_min(self.lowest)
        x = z.sub_(new[:, None])  # in place: the tile is ours
        e = torch.exp(x, out=self.buffers.get(f"e{self.name}", x)) if keep or self.xsum is not None else x.exp_()
        tile_sum = e.sum(1)
        rescale = torch.exp(old - new)
        if self.special is not None:  # sum of e over the tile's special entries, rescaled as S is
            ids = self.head.special_in(lo, hi)
            self.special[rows] = self.special[rows] * rescale + (e.index_select(1, ids).sum(1) if ids.numel() else 0)
        before = self.sum[rows].clone() if keep else self.sum[rows]
        if self.xsum is not None:  # sum e (z - m): moving m to m' adds (m - m') S before rescaling
            shift = (old - new).clamp_min(self.lowest) * before
            # x is spent unless the pair needs it; else a reused buffer (a fresh tile-sized tensor costs page faults)
            prod = torch.mul(e, x, out=self.buffers.get("prod", x)) if keep else x.mul_(e)
            tile_xsum = prod.sum(1)
            self.xsum[rows] = (self.xsum[rows] + shift) * rescale + tile_xsum
        out = (e, x, old.clamp_min(self.lowest), new, rescale, before) if keep else None
        self.sum[rows] = before * rescale + tile_sum  # old and before may be views: updated last
        self.max[rows] = new
        return out

    def _count_above(self, z: torch.Tensor, rows: slice, inside: torch.Tensor, picked: torch.Tensor) -> None:
        """Entries of the tile whose logit is above the target's, the target excluded. The comparison is written as
        0/1 in the tile's float dtype: summing floats is vectorised, summing bools converts the tile to int64 first
        (4x the time on a 2-core EPYC); a float sum is exact up to 2^24 entries."""
        ref = picked if self.ref is None else self.ref[rows]
        above = torch.gt(z, ref[:, None], out=self.buffers.get("above", z)).sum(1)
        self.above[rows] += above.long() - (inside & (picked > ref)).long()

    def finish(self, metrics) -> dict[str, torch.Tensor]:
        log_sum = torch.log(self.sum)
        lse = self.max + log_sum
        nll = lse - self.target  # as head._tiled_nll computes it
        values = {"nll": lambda: nll, "p_target": lambda: torch.exp(-nll), "p_argmax": lambda: 1 / self.sum,
                  "entropy": lambda: log_sum - self.xsum / self.sum, "argmax": lambda: self.arg,
                  "rank": lambda: self.above, "p_special": lambda: self.special / self.sum}
        return {name: values[name]() for name in metrics}


def _check(metrics) -> None:
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"the output head computes no {sorted(unknown)}; it computes {', '.join(METRICS)}")


def stream_stats(head, hidden: torch.Tensor, targets: torch.Tensor, metrics=METRICS, exact: bool = False,
                 chunk: int | None = None) -> dict:
    """One model's `metrics` for targets[i] given hidden[i], one pass over the head's tiles of `chunk` tokens (the
    head's statistics chunk by default): [N] each, fp32 (float64 if exact), argmax and rank int64."""
    _check(metrics)
    stream = LogitStream(head, hidden, targets, metrics, exact, _Buffers())
    for rows, lo, hi in head.tiles(targets.shape[0], chunk or head.stats_tokens):
        stream.step(rows, lo, hi, keep=False)
    return stream.finish(metrics)


def pair_tiles(head_b, head_o) -> tuple[int, int]:
    """Vocabulary entries and tokens per tile for two heads read together. A projection applied whole makes the
    other one whole too (the tiles must line up). Each model keeps its own statistics chunk: halving it to hold both
    models' tiles in one budget cost the matmul 10-18 % (fewer rows) and gained nothing in cache (2-core EPYC)."""
    if head_b.vocab != head_o.vocab:
        raise ValueError(f"the two models' output heads differ in vocabulary size ({head_b.vocab} vs "
                         f"{head_o.vocab}): their distributions cannot be compared entry by entry")
    vocab = head_b.vocab
    tile = min(head_b.vocab_tile, head_o.vocab_tile) if head_b.plain and head_o.plain else vocab
    chunk = min(head_b.stats_tokens * head_b.vocab_tile, head_o.stats_tokens * head_o.vocab_tile) // tile
    return tile, max(1, chunk)


def paired_token_stats(head_b, hidden_b: torch.Tensor, head_o, hidden_o: torch.Tensor, targets: torch.Tensor,
                       metrics=METRICS, exact: bool = False) -> dict:
    """Model b (the baseline) and model o on the same targets, one pass over both heads' tiles together.

    Returns the roles of formats/columns.py: each model's `metrics` as stream_stats gives them (<metric>_b,
    <metric>_o), KL(b||o) and KL(o||b) in nats (kl_bo, kl_ob; fp32, float64 if exact), whether the two argmaxes
    agree (top1_agree, bool) and b's probability of o's argmax (p_b_argmax_o), [N] each. Raises ValueError when the
    vocabulary sizes differ (the paired statistics are then undefined)."""
    _check(metrics)
    tile, chunk = pair_tiles(head_b, head_o)
    buffers = _Buffers()
    need = tuple(dict.fromkeys((*metrics, "argmax")))
    sb = LogitStream(head_b, hidden_b, targets, need, exact, buffers, "b")
    so = LogitStream(head_o, hidden_o, targets, need, exact, buffers, "o")
    # sum e_b (z_b - z_o) less (m_b - m_o) S_b, and the same for o: the maxima cancel in KL, leaving no large terms
    cross_b, cross_o = torch.zeros_like(sb.sum), torch.zeros_like(so.sum)
    zb_at_top_o = torch.zeros_like(sb.sum)  # b's logit at o's top-1 so far: known once o's top-1 moves into a tile
    top_b = torch.full((sb.sum.shape[0], SHIFT_CAP), float("-inf"), dtype=sb.acc, device=sb.sum.device)  # b's 3 largest
    for rows, lo, hi in head_b.tiles(targets.shape[0], chunk, tile):
        eb, xb, old_b, new_b, rescale_b, before_b = sb.step(rows, lo, hi, keep=True)
        eo, xo, old_o, new_o, rescale_o, before_o = so.step(rows, lo, hi, keep=True)
        # each logit as z - m + m of its own tile, as b's logit at o's top-1 is: equal entries compare equal
        tile_top = xb.topk(min(SHIFT_CAP, hi - lo), dim=1).values + new_b[:, None]
        top_b[rows] = torch.cat([top_b[rows], tile_top], 1).topk(SHIFT_CAP, dim=1).values
        top_o = so.arg[rows]  # in this tile only if this tile moved it: earlier tiles hold lower ids
        at = xb.gather(1, (top_o - lo).clamp(0, hi - lo - 1)[:, None])[:, 0] + new_b
        zb_at_top_o[rows] = torch.where(top_o >= lo, at, zb_at_top_o[rows])
        diff = xb.sub_(xo)  # z_b - z_o - (m_b - m_o)
        moved = (old_b - old_o) - (new_b - new_o)  # how far m_b - m_o moved
        prod = torch.mul(eb, diff, out=buffers.get("prod", diff))
        cross_b[rows] = (cross_b[rows] + moved * before_b) * rescale_b + prod.sum(1)
        cross_o[rows] = (cross_o[rows] - moved * before_o) * rescale_o - diff.mul_(eo).sum(1)  # diff: spent
    out = {f"{name}_b": values for name, values in sb.finish(metrics).items()}
    out |= {f"{name}_o": values for name, values in so.finish(metrics).items()}
    log_b, log_o = torch.log(sb.sum), torch.log(so.sum)
    out |= {"kl_bo": cross_b / sb.sum - log_b + log_o, "kl_ob": cross_o / so.sum - log_o + log_b,
            "top1_agree": sb.arg == so.arg, "p_b_argmax_o": torch.exp(zb_at_top_o - sb.max - log_b),
            "rank_b_argmax_o": (top_b > zb_at_top_o[:, None]).sum(1).to(torch.int8)}
    return out
