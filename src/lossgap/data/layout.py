"""Layouts: place documents into rows (packed, as in pretraining, or one document per row) and collate batches.

Targets are explicit and independent of the layout: with label offset k, a document of n tokens has targets
k..n-1, each predicted from the position k tokens before it (a document with a chat prefix of c context tokens:
c+k..n-1, reported at their position in the raw document). A segment (a run of one document's tokens inside a
row) scores the targets its positions predict, even when the target itself lies past the row's end, so every
layout and mask scores exactly the same set of (document, position) pairs (docs/design.md, contract 2).

A chat-formatted document is laid out exactly as its raw document is (the same cuts at row and window edges, in
raw positions), and every one of its segments carries the chat prefix: for its first, the prefix in place of BOS,
for a continued one, the prefix before the continued tokens. So each target is predicted from its raw run's context
plus the prefix, and the truncated flags are the raw run's; rows grow by the prefix per segment.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import LayoutConfig
from .encode import TokenizedDocument


@dataclass
class Segment:
    """doc.ids[start:start+length] placed at row[offset:offset+length]; scores doc targets [target_lo, target_hi)."""

    doc: TokenizedDocument
    start: int
    length: int
    offset: int
    target_lo: int
    target_hi: int
    position_start: int | None = None  # continuous positions of a segment moved out of its row: its old offset
    prefix: np.ndarray | None = None  # tokens placed before the document's (a continued chat segment's prefix)

    @property
    def span(self) -> int:
        """Positions the segment takes in its row: its prefix and its tokens."""
        return self.length + (0 if self.prefix is None else len(self.prefix))


@dataclass
class Row:
    segments: list[Segment]

    @property
    def length(self) -> int:
        last = self.segments[-1]
        return last.offset + last.span


@dataclass
class Batch:
    """Model inputs for B rows padded to L, plus the scored targets gathered from them."""

    input_ids: torch.Tensor  # [B, L] int64
    position_ids: torch.Tensor  # [B, L] int64
    segment_ids: torch.Tensor  # [B, L] int64, -1 for padding; unique per segment within a row
    flat_index: torch.Tensor  # [N] index into the flattened [B*L] positions that predict a target
    targets: torch.Tensor  # [N] target token ids
    doc_ids: np.ndarray  # [N] int64
    target_pos: np.ndarray  # [N] int32, index of the target token within its document
    truncated: np.ndarray  # [N] bool, the prediction did not see the whole document prefix
    docs: dict[int, TokenizedDocument]
    n_input_tokens: int
    context: np.ndarray | None = None  # [N] int32, tokens of its document the prediction saw (BOS counted)

    @property
    def n_targets(self) -> int:
        return int(self.targets.numel())

    def first_row_prefix(self, n: int) -> tuple[Batch, np.ndarray]:
        """The first n positions of the first row as a batch of its own, and which of this batch's targets it
        scores (a mask in target order). Causal attention makes every kept prediction the same computation as in
        the whole batch: the float32 check measures a few tokens of the run instead of a whole batch."""
        n = min(n, self.input_ids.shape[1])
        keep = (self.flat_index < n).numpy()  # row 0's positions are flat 0..L-1
        ids = self.input_ids[:1, :n]
        batch = Batch(ids, self.position_ids[:1, :n], self.segment_ids[:1, :n], self.flat_index[keep],
                      self.targets[keep], self.doc_ids[keep], self.target_pos[keep], self.truncated[keep], self.docs,
                      int((self.segment_ids[0, :n] >= 0).sum()), None if self.context is None else self.context[keep])
        return batch, keep


def make_rows(docs: Iterable[TokenizedDocument], cfg: LayoutConfig) -> Iterator[Row]:
    if cfg.layout == "packed":
        return packed_rows(docs, cfg.seq_len, cfg.label_offset)
    return single_rows(docs, cfg.seq_len, cfg.label_offset, cfg.stride)


def synthetic_row(token_arrays: list[np.ndarray], k: int, source: str) -> list[Row]:
    """Documents made of these token ids (ids 0, 1, ...) packed into one row: the start-up checks' input."""
    docs = [TokenizedDocument(i, source, f"{source}{i}", ids, 0) for i, ids in enumerate(token_arrays)]
    return list(packed_rows(docs, sum(len(ids) for ids in token_arrays), k))


def placed(doc: TokenizedDocument, start: int, take: int, offset: int, lo: int, hi: int) -> Segment:
    """The raw document's tokens [start, start + take), scoring its targets [lo, hi) (raw positions), as a segment of
    `doc` at `offset`: a chat-formatted document keeps its whole prefix before every segment (see the module's
    docstring); a raw one is placed as it is."""
    if not doc.prefix:
        return Segment(doc, start, take, offset, lo, hi)
    c = doc.context
    if start == 0:  # the prefix in place of BOS (or before the text)
        return Segment(doc, 0, c + take, offset, c + lo, c + hi)
    return Segment(doc, c + start, take, offset, c + lo, c + hi, prefix=doc.ids[:doc.prefix])


def packed_rows(docs: Iterable[TokenizedDocument], seq_len: int, k: int) -> Iterator[Row]:
    """Concatenate documents into rows of seq_len; a document that does not fit continues in the next row. Rows are
    cut by the raw documents' tokens; a chat-formatted document's segments then take its prefix too."""
    segments: list[Segment] = []
    fill = offset = 0
    for doc in docs:
        n = len(doc.ids) - doc.context if doc.prefix else len(doc.ids)  # the raw document's tokens
        start = 0
        while start < n:
            take = min(n - start, seq_len - fill)
            segments.append(placed(doc, start, take, offset, start + k, min(start + take + k, n)))
            fill += take
            offset += segments[-1].span
            start += take
            if fill == seq_len:
                yield Row(segments)
                segments, fill, offset = [], 0, 0
    if segments:
        yield Row(segments)


def single_rows(docs: Iterable[TokenizedDocument], seq_len: int, k: int, stride: int | None) -> Iterator[Row]:
    """One document per row; a longer one is split into windows seq_len long, stride apart (disjoint by default).

    Window w scores the targets not scored by window w-1, so each target is scored once; with a stride below
    seq_len every window after the first keeps at least seq_len - stride tokens of context (the HF perplexity guide).
    """
    step = stride or seq_len
    for doc in docs:
        n = len(doc.ids) - doc.context if doc.prefix else len(doc.ids)  # the raw document's tokens
        begin, lo = 0, k
        while True:
            end = min(begin + seq_len, n)
            hi = min(end + k, n)
            yield Row([placed(doc, begin, end - begin, 0, lo, hi)])
            if hi >= n:
                break
            begin, lo = begin + step, max(hi, lo)


def retarget(rows: list[Row], k_from: int, k_to: int) -> list[Row]:
    """The same rows scoring label offset k_to >= k_from: the inputs are the same, every target range moves by
    k_to - k_from (capped at the document's end). Rows laid out for the smaller offset serve the larger one: a
    segment's range [start + k, end + k) only moves, and a trailing window the larger offset would not have needed
    scores nothing for it. One forward pass then serves both offsets (tests/test_layout.py checks the scored sets)."""
    if k_to < k_from:
        raise ValueError(f"retarget: rows for offset {k_from} cannot serve offset {k_to}")
    if k_to == k_from:
        return rows
    shift = k_to - k_from
    return [Row([replace(s, target_lo=s.target_lo + shift, target_hi=min(s.target_hi + shift, len(s.doc.ids)))
                 for s in row.segments]) for row in rows]


def collate(rows: list[Row], k: int, position_mode: str, pad_id: int = 0, pad_multiple: int = 1) -> Batch:
    """Pad rows to one length (rounded up to pad_multiple: fewer distinct shapes, fewer kernel set-ups) and gather
    the (position, target) pairs each segment scores."""
    length = -(-max(r.length for r in rows) // pad_multiple) * pad_multiple
    input_ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    position_ids = np.zeros((len(rows), length), dtype=np.int64)
    segment_ids = np.full((len(rows), length), -1, dtype=np.int64)
    flat, targets, doc_ids, target_pos, truncated, context = [], [], [], [], [], []
    docs: dict[int, TokenizedDocument] = {}
    for b, row in enumerate(rows):
        # padding continues the last position: position ids that restart inside a row would make transformers
        # build a document mask of its own when no mask is passed
        last = row.segments[-1]
        pad_from = (last.span if position_mode == "restart" else
                    (last.offset if last.position_start is None else last.position_start) + last.span)
        position_ids[b, row.length:] = np.arange(pad_from, pad_from + length - row.length)
        for s, seg in enumerate(row.segments):
            sl = slice(seg.offset, seg.offset + seg.span)
            before = 0 if seg.prefix is None else len(seg.prefix)
            if before:
                input_ids[b, seg.offset : seg.offset + before] = seg.prefix
            input_ids[b, seg.offset + before : sl.stop] = seg.doc.ids[seg.start : seg.start + seg.length]
            segment_ids[b, sl] = s
            if position_mode == "restart":
                position_ids[b, sl] = np.arange(seg.span)
            else:
                first = sl.start if seg.position_start is None else seg.position_start
                position_ids[b, sl] = np.arange(first, first + seg.span)
            docs[seg.doc.doc_id] = seg.doc
            if seg.target_hi <= seg.target_lo:
                continue
            t = np.arange(seg.target_lo, seg.target_hi)
            flat.append(b * length + seg.offset + before + (t - k - seg.start))
            targets.append(seg.doc.ids[t])
            doc_ids.append(np.full(t.size, seg.doc.doc_id, dtype=np.int64))
            target_pos.append((t - seg.doc.context).astype(np.int32))
            truncated.append(np.full(t.size, seg.start > 0))
            # the document's own tokens up to the predicting position (a chat prefix is not the document's)
            context.append((t - k - max(seg.start, seg.doc.context) + 1).astype(np.int32))
    cat = _concat_or_empty
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids),
        segment_ids=torch.from_numpy(segment_ids),
        flat_index=torch.from_numpy(cat(flat, np.int64)),
        targets=torch.from_numpy(cat(targets, np.int64)),
        doc_ids=cat(doc_ids, np.int64),
        target_pos=cat(target_pos, np.int32),
        truncated=cat(truncated, bool),
        docs=docs,
        n_input_tokens=sum(r.length for r in rows),
        context=cat(context, np.int32),
    )


def windows(rows: Iterable[Row], window_tokens: int) -> Iterator[list[Row]]:
    """Consecutive groups of rows of about window_tokens: a plan may reorder work inside a window, and the
    results of a window are written in document order, so output order never depends on the plan."""
    group: list[Row] = []
    tokens = 0
    for row in rows:
        group.append(row)
        tokens += row.length
        if tokens >= window_tokens:
            yield group
            group, tokens = [], 0
    if group:
        yield group


def isolate_segments(rows: Iterable[Row]) -> list[Row]:
    """Each segment in a row of its own (keeping its positions): under the block mask nothing else was visible."""
    isolated = []
    for row in rows:
        for seg in row.segments:
            start = seg.offset if seg.position_start is None else seg.position_start
            isolated.append(Row([replace(seg, offset=0, position_start=start)]))
    return isolated


def length_buckets(rows: list[Row], batch_tokens: int, pad_multiple: int = 1,
                   batch_overhead: int | None = None) -> Iterator[list[Row]]:
    """Rows sorted by length and cut into batches whose padded size (rows x longest row, rounded up to pad_multiple)
    stays within batch_tokens, choosing the cuts that compute the fewest padded tokens plus a fixed cost per batch
    (default batch_tokens / 64 tokens). Filling greedily from the longest row computed 30 % padding on Pile-like
    lengths; this dynamic programme over the sorted lengths computes about 3 % (benchmarks/RESULTS.md)."""
    ordered = sorted(rows, key=lambda r: r.length, reverse=True)
    n = len(ordered)
    padded = np.array([-(-r.length // pad_multiple) * pad_multiple for r in ordered], dtype=np.int64)
    overhead = batch_tokens // 64 if batch_overhead is None else batch_overhead
    best = np.zeros(n + 1)
    first = np.zeros(n + 1, dtype=np.int64)  # first[j]: where the last batch of the best cut of ordered[:j] starts
    lo = 0
    for j in range(1, n + 1):
        # ordered[i:j] fits when (j - i) * padded[i] <= batch_tokens (one row always fits); feasible i form [lo, j)
        while lo < j - 1 and (j - lo) * padded[lo] > batch_tokens:
            lo += 1
        starts = np.arange(lo, j)
        cost = best[lo:j] + (j - starts) * padded[lo:j] + overhead
        pick = int(np.argmin(cost))
        best[j], first[j] = cost[pick], lo + pick
    cuts, j = [], n
    while j > 0:
        cuts.append((int(first[j]), j))
        j = int(first[j])
    for i, j in reversed(cuts):
        yield ordered[i:j]


def _concat_or_empty(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
