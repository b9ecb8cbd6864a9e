"""Where a loss difference comes from: D = (1/N) sum_t delta_t (delta_t = nll_other - nll_base, the same N tokens)
split along a dimension into buckets whose contributions sum_{t in b} delta_t / N add up to D (docs/design.md,
contract 9), each with a paired document-bootstrap interval; bits per byte by byte class for models whose tokens
differ; and the documents, target tokens and spans that move D most in either direction.

Everything is computed in float64 from the per-token arrays and returns plain JSON-able dicts and lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from .bootstrap import ratio_intervals
from .positions import bucket_labels, position_bucket
from .textclass import BYTE_CLASSES, TEXT_CLASSES, TokenTexts, class_codes

CONFIDENCE_EDGES = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
CONFIDENCE_LABELS = ("<0.01", "0.01-0.1", "0.1-0.3", "0.3-0.5", "0.5-0.7", "0.7-0.9", "0.9-0.99", ">=0.99")
AGREEMENT_LABELS = ("agree", "differ")
TOP_TYPES = 3  # target types named per frequency bucket


def confidence_labels_from(p: float) -> tuple[str, ...]:
    """The confidence buckets whose probabilities are all at least `p` (an edge of CONFIDENCE_EDGES)."""
    return CONFIDENCE_LABELS[CONFIDENCE_EDGES.index(p) + 1:]


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else math.nan


def contributions(nll_b, nll_o, doc_id, bucket, labels, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict:
    """D split by `bucket` (an index into `labels` per token): each non-empty bucket's token and document counts,
    token share, mean delta and both mean NLLs, its contribution sum(delta)/N, share of D, and a document-bootstrap
    interval of the contribution (resampled documents' bucket delta sum / their token count). A bucket (or D) of one
    document gets no interval (NaN): resampling one document shows no spread between documents."""
    nll_b = np.asarray(nll_b, dtype=np.float64)
    delta = np.asarray(nll_o, dtype=np.float64) - nll_b
    bucket = np.asarray(bucket, dtype=np.int64)
    n, k = delta.size, len(labels)
    docs, doc_idx = np.unique(np.asarray(doc_id), return_inverse=True)
    diff = _ratio(delta.sum(), n)
    b_sum = np.bincount(bucket, weights=delta, minlength=k)
    b_nll = np.bincount(bucket, weights=nll_b, minlength=k)
    b_nll_o = np.bincount(bucket, weights=np.asarray(nll_o, dtype=np.float64), minlength=k)
    b_n = np.bincount(bucket, minlength=k)
    sums = np.bincount(doc_idx * k + bucket, weights=delta, minlength=docs.size * k).reshape(docs.size, k)
    b_docs = (np.bincount(doc_idx * k + bucket, minlength=docs.size * k).reshape(docs.size, k) > 0).sum(axis=0)
    sums = np.column_stack([sums, sums.sum(axis=1)])  # the last column: D itself, from the same resamples
    lo, hi = ratio_intervals(sums, np.bincount(doc_idx, minlength=docs.size), n_boot, seed, level)
    rows = []
    for i, label in enumerate(labels):
        if b_n[i] == 0:
            continue
        contribution = b_sum[i] / n
        rows.append({
            "bucket": str(label), "n_tokens": int(b_n[i]), "n_documents": int(b_docs[i]),
            "share_tokens": float(b_n[i] / n), "mean_nll_base": float(b_nll[i] / b_n[i]),
            "mean_nll_other": float(b_nll_o[i] / b_n[i]), "mean_delta": float(b_sum[i] / b_n[i]),
            "contribution": float(contribution), "share_of_diff": _ratio(contribution, diff),
            **_interval(lo[i], hi[i], b_docs[i]),
        })
    return {"n_tokens": int(n), "n_documents": int(docs.size), "diff": diff, **_interval(lo[-1], hi[-1], docs.size),
            "buckets": rows}


def _interval(low: float, high: float, n_documents: int) -> dict[str, float]:
    """A bootstrap interval over documents, or NaN for one document (every resample is that document alone)."""
    if n_documents == 1:
        return {"ci_low": math.nan, "ci_high": math.nan}
    return {"ci_low": float(low), "ci_high": float(high)}


def domain_buckets(doc_id, doc_domain: Mapping[int, str]) -> tuple[np.ndarray, list[str]]:
    """Bucket index per token from its document's domain; labels sorted."""
    docs, inverse = np.unique(np.asarray(doc_id), return_inverse=True)
    missing = [int(d) for d in docs if int(d) not in doc_domain]
    if missing:
        raise ValueError(f"no domain for documents {missing[:5]}")
    doc_labels = [str(doc_domain[int(d)]) for d in docs]
    labels = sorted(set(doc_labels))
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[x] for x in doc_labels], dtype=np.int64)[inverse], labels


def position_buckets(pos) -> tuple[np.ndarray, list[str]]:
    """The target's position within its document in positions.position_bucket's buckets (1, 2, 3, 4, 5-8, ...)."""
    return position_bucket(np.asarray(pos)), bucket_labels()


def text_class_buckets(target, vocab: pa.Table) -> tuple[np.ndarray, list[str]]:
    """The target token's text class (textclass.py) from the vocabulary table."""
    return class_codes(vocab)[np.asarray(target)], list(TEXT_CLASSES)


def frequency_buckets(target, n_buckets: int = 10) -> tuple[np.ndarray, list[str]]:
    """Token-weighted frequency deciles of the target in the scored corpus.

    Types are sorted by how often they occur as targets; types with the same count stay together and a count group
    goes to the decile holding the middle of its tokens, so each bucket holds about a tenth of the scored tokens
    (fewer buckets when one count group holds more). Labels are the count ranges, rarest first."""
    target = np.asarray(target)
    if target.size == 0:
        return np.zeros(0, dtype=np.int64), []
    types, type_idx, type_count = np.unique(target, return_inverse=True, return_counts=True)
    counts, count_idx, group_size = np.unique(type_count, return_inverse=True, return_counts=True)
    group_tokens = counts * group_size
    middle = np.cumsum(group_tokens) - group_tokens / 2
    decile = np.minimum((middle * n_buckets / target.size).astype(np.int64), n_buckets - 1)
    used, group_bucket = np.unique(decile, return_inverse=True)
    labels = []
    for b in range(used.size):
        lo, hi = counts[group_bucket == b].min(), counts[group_bucket == b].max()
        labels.append(str(lo) if lo == hi else f"{lo}-{hi}")
    return group_bucket[count_idx][type_idx], labels


def confidence_buckets(p_target_b) -> tuple[np.ndarray, list[str]]:
    """The baseline's probability of the target: <0.01, 0.01-0.1, ..., 0.9-0.99, >=0.99 (each bin [low, high))."""
    p = np.asarray(p_target_b, dtype=np.float64)
    return np.searchsorted(np.array(CONFIDENCE_EDGES), p, side="right"), list(CONFIDENCE_LABELS)


def agreement_buckets(agree) -> tuple[np.ndarray, list[str]]:
    """Whether the two models' top-1 predictions agree."""
    return (~np.asarray(agree, dtype=bool)).astype(np.int64), list(AGREEMENT_LABELS)


def attribute(tokens: Mapping[str, np.ndarray], vocab: pa.Table | None = None,
              doc_domain: Mapping[int, str] | None = None, n_boot: int = 1000, seed: int = 0,
              top_k: int = 20) -> dict:
    """Every dimension available from the per-token arrays, and the ranked lists. One seed for every dimension, so
    each dimension's interval of D is the same."""
    t = tokens
    dims = {}
    if doc_domain is not None:
        dims["domain"] = domain_buckets(t["doc_id"], doc_domain)
    dims["position"] = position_buckets(t["pos"])
    if "context" in t:  # the paired pass's: the position less what a row edge cut (untruncated tokens: the same)
        dims["context"] = position_buckets(t["context"])
    if vocab is not None:
        dims["text_class"] = text_class_buckets(t["target"], vocab)
    dims["frequency"] = frequency_buckets(t["target"])
    if "p_target_b" in t:
        dims["confidence"] = confidence_buckets(t["p_target_b"])
    if "top1_agree" in t:
        dims["agreement"] = agreement_buckets(t["top1_agree"])
    out = {"dimensions": {name: contributions(t["nll_b"], t["nll_o"], t["doc_id"], b, labels, n_boot, seed)
                          for name, (b, labels) in dims.items()}}
    types = bucket_types(t["target"], t["nll_b"], t["nll_o"], *dims["frequency"], vocab)
    for row in out["dimensions"]["frequency"]["buckets"]:
        row |= types[row["bucket"]]
    out["top_documents"] = top_documents(t["doc_id"], t["nll_b"], t["nll_o"], top_k, doc_domain)
    out["top_tokens"] = top_tokens(t["target"], t["nll_b"], t["nll_o"], vocab, top_k)
    out["top_spans"] = top_spans(t["doc_id"], t["pos"], t["nll_b"], t["nll_o"], vocab=vocab, k=top_k,
                                 target=t["target"])
    return out


def bucket_types(target, nll_b, nll_o, bucket, labels, vocab: pa.Table | None = None,
                 k: int = TOP_TYPES) -> dict[str, dict]:
    """Per non-empty bucket: how many target types it holds and the k types that carry most of its summed delta (in
    the direction of that sum), each with its count, contribution to D and share of the bucket's contribution. On a
    small corpus a frequency bucket is a few types, and a finding that names the bucket names them."""
    delta = np.asarray(nll_o, dtype=np.float64) - np.asarray(nll_b, dtype=np.float64)
    n_types = max(int(np.max(target, initial=0)) + 1, 1)
    keys, key_idx = np.unique(np.asarray(bucket, dtype=np.int64) * n_types + np.asarray(target), return_inverse=True)
    key_sum = np.bincount(key_idx, weights=delta, minlength=keys.size)
    key_n = np.bincount(key_idx, minlength=keys.size)
    key_bucket, key_type = keys // n_types, keys % n_types
    text = vocab.column("text") if vocab is not None else None
    out = {}
    for b in np.unique(key_bucket):
        mine = np.flatnonzero(key_bucket == b)
        total = key_sum[mine].sum()
        sign = -1.0 if total < 0 else 1.0
        top = mine[np.lexsort((key_type[mine], -sign * key_sum[mine]))][:k]
        out[str(labels[b])] = {"n_types": int(mine.size), "top_types": [
            {"token_id": int(key_type[j]), **({"text": text[int(key_type[j])].as_py()} if text is not None else {}),
             "n_tokens": int(key_n[j]), "contribution": float(key_sum[j] / delta.size),
             "share_of_bucket": _ratio(key_sum[j], total)} for j in top]}
    return out


def _class_losses(doc_idx, target, nll, vocab: pa.Table, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per document and byte class (last column: special tokens), the loss of one model with each token's loss
    spread evenly over its bytes; and the model's scored bytes per class."""
    n_bytes = vocab.column("n_bytes").to_numpy().astype(np.float64)[target]
    nll = np.asarray(nll, dtype=np.float64)
    k = len(BYTE_CLASSES)
    loss = np.zeros((n_docs, k + 1))
    n_cls = np.zeros(k + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_byte = np.where(n_bytes > 0, nll / n_bytes, 0.0)
    for j, name in enumerate(BYTE_CLASSES):
        in_class = vocab.column(f"bytes_{name}").to_numpy().astype(np.float64)[target]
        loss[:, j] = np.bincount(doc_idx, weights=per_byte * in_class, minlength=n_docs)
        n_cls[j] = in_class.sum()
    loss[:, k] = np.bincount(doc_idx, weights=np.where(n_bytes > 0, 0.0, nll), minlength=n_docs)
    return loss, n_cls


def _doc_index(doc_id, docs: np.ndarray) -> np.ndarray:
    doc_id = np.asarray(doc_id)
    idx = np.searchsorted(docs, doc_id)
    if doc_id.size and (idx.max() >= docs.size or not np.array_equal(docs[idx], doc_id)):
        raise ValueError("tokens of documents without a byte count")
    return idx


def byte_class_contributions(base: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray],
                             vocab_b: pa.Table, vocab_o: pa.Table, doc_ids, doc_bytes,
                             n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Bits per byte by byte class, for models that each score their own tokens of the same documents.

    `base` and `other` hold each model's doc_id, target and nll; `doc_ids`/`doc_bytes` the documents' UTF-8
    bytes (the denominator of both models). D_bpb = (sum L_o - sum L_b) / (ln 2 x bytes); class k contributes
    (L_o[k] - L_b[k]) / (ln 2 x bytes) with each token's loss spread evenly over its bytes, special tokens' loss in
    "special"; the contributions add up to D_bpb. Intervals: documents resampled, one draw shared by all classes."""
    order = np.argsort(np.asarray(doc_ids), kind="stable")
    docs = np.asarray(doc_ids)[order]
    n_bytes = np.asarray(doc_bytes, dtype=np.float64)[order]
    losses, scored = [], []
    for run, vocab in ((base, vocab_b), (other, vocab_o)):
        loss, n_cls = _class_losses(_doc_index(run["doc_id"], docs), np.asarray(run["target"]), run["nll"],
                                    vocab, docs.size)
        losses.append(loss)
        scored.append(n_cls)
    denom = math.log(2) * n_bytes.sum()
    sums = losses[1] - losses[0]
    lo, hi = ratio_intervals(np.column_stack([sums, sums.sum(axis=1)]), math.log(2) * n_bytes, n_boot, seed, level)
    diff = _ratio(sums.sum(), denom)
    rows = []
    for j, name in enumerate((*BYTE_CLASSES, "special")):
        bits_b, bits_o = losses[0][:, j].sum() / math.log(2), losses[1][:, j].sum() / math.log(2)
        contribution = _ratio(sums[:, j].sum(), denom)
        rows.append({
            "bucket": name, "bytes_base": int(scored[0][j]), "bytes_other": int(scored[1][j]),
            "bits_base": float(bits_b), "bits_other": float(bits_o),
            "bpb_base": _ratio(bits_b, scored[0][j]), "bpb_other": _ratio(bits_o, scored[1][j]),
            "contribution": contribution, "share_of_diff": _ratio(contribution, diff),
            "ci_low": float(lo[j]), "ci_high": float(hi[j]),
        })
    return {"unit": "bits/byte", "n_documents": int(docs.size), "n_bytes": int(n_bytes.sum()),
            "base": _ratio(losses[0].sum(), denom), "other": _ratio(losses[1].sum(), denom), "diff": diff,
            "ci_low": float(lo[-1]), "ci_high": float(hi[-1]), "classes": rows}


def _ranked(order: np.ndarray, value: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Indices of the k largest positive and the k most negative values, ties broken by `order`."""
    worse = np.lexsort((order, -value))
    better = np.lexsort((order, value))
    return {"other_worse": worse[value[worse] > 0][:k], "other_better": better[value[better] < 0][:k]}


def _grouped(keys, nll_b, nll_o, k: int) -> tuple[np.ndarray, dict[str, list[dict]]]:
    """Per distinct key: token count, summed delta, its contribution to D and both mean NLLs; the k largest each
    way (rows without the key itself, which the caller names)."""
    uniq, idx = np.unique(np.asarray(keys), return_inverse=True)
    sum_b = np.bincount(idx, weights=np.asarray(nll_b, dtype=np.float64), minlength=uniq.size)
    sum_o = np.bincount(idx, weights=np.asarray(nll_o, dtype=np.float64), minlength=uniq.size)
    n_tok = np.bincount(idx, minlength=uniq.size)
    delta = sum_o - sum_b
    rows = {direction: [(int(i), {"delta_sum": float(delta[i]), "contribution": float(delta[i] / idx.size),
                                  "mean_delta": float(delta[i] / n_tok[i]), "mean_nll_base": float(sum_b[i] / n_tok[i]),
                                  "mean_nll_other": float(sum_o[i] / n_tok[i]), "n": int(n_tok[i])})
                        for i in chosen]
            for direction, chosen in _ranked(uniq, delta, k).items()}
    return uniq, rows


def top_documents(doc_id, nll_b, nll_o, k: int = 20, doc_domain: Mapping[int, str] | None = None) -> dict:
    """The documents with the largest summed delta each way, with token counts and both models' mean NLL."""
    docs, ranked = _grouped(doc_id, nll_b, nll_o, k)
    out = {}
    for direction, rows in ranked.items():
        out[direction] = []
        for i, row in rows:
            doc = int(docs[i])
            out[direction].append({"doc_id": doc, **({"domain": str(doc_domain[doc])} if doc_domain else {}),
                                   "n_tokens": row.pop("n"), **row})
    return out


def top_tokens(target, nll_b, nll_o, vocab: pa.Table | None = None, k: int = 20) -> dict:
    """The target tokens with the largest total contribution each way: count, mean delta, both mean NLLs, text (a
    special token's name)."""
    types, ranked = _grouped(target, nll_b, nll_o, k)
    texts = TokenTexts.of(vocab) if vocab is not None else None
    out = {}
    for direction, rows in ranked.items():
        out[direction] = []
        for i, row in rows:
            token = int(types[i])
            out[direction].append({"token_id": token, **({"text": texts.alone(token)} if texts is not None else {}),
                                   "count": row.pop("n"), **row})
    return out


def best_span_ends(values: np.ndarray, seg_start: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """For each index j: the largest sum of values[i..j] over starts i >= seg_start[j] with j - i < max_len, and
    that span's length (the shortest on ties). Prefix sums, one vectorised pass per length: O(n x max_len)."""
    n = values.size
    prefix = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    j = np.arange(n)
    best = prefix[1:] - prefix[:-1]
    best_len = np.ones(n, dtype=np.int64)
    for length in range(2, max_len + 1):
        start = j - length + 1
        ok = start >= seg_start
        if not ok.any():
            break
        s = prefix[j + 1] - prefix[np.maximum(start, 0)]
        better = ok & (s > best)
        best[better] = s[better]
        best_len[better] = length
    return best, best_len


def _greedy_spans(values: np.ndarray, doc_idx: np.ndarray, max_len: int, per_doc: int) -> list[tuple[int, int]]:
    """Up to `per_doc` non-overlapping spans per document, each the positive-sum span of at most max_len tokens
    with the largest sum among tokens not yet taken (spans never cross a taken token). Returns (first, last)."""
    n = values.size
    j = np.arange(n)
    taken = np.zeros(n, dtype=bool)
    spans: list[tuple[int, int]] = []
    if n == 0:
        return spans
    for _ in range(per_doc):
        brk = np.concatenate([[True], (doc_idx[1:] != doc_idx[:-1]) | taken[:-1]])
        seg_start = np.maximum.accumulate(np.where(brk, j, 0))
        best, best_len = best_span_ends(values, seg_start, max_len)
        best[taken] = -np.inf
        order = np.lexsort((j, -best, doc_idx))
        first_of_doc = order[np.concatenate([[True], doc_idx[order][1:] != doc_idx[order][:-1]])]
        chosen = first_of_doc[best[first_of_doc] > 0]
        if chosen.size == 0:
            break
        starts = chosen - best_len[chosen] + 1
        spans.extend(zip(starts.tolist(), chosen.tolist(), strict=True))
        edges = np.zeros(n + 1, dtype=np.int64)
        np.add.at(edges, starts, 1)
        np.add.at(edges, chosen + 1, -1)
        taken |= np.cumsum(edges[:-1]) > 0
    return spans


def before_in_document(target: np.ndarray, doc_idx: np.ndarray, first: int, n: int = 4) -> np.ndarray:
    """The up to `n` targets before index `first` of its document (tokens sorted by document and position): what
    TokenTexts.span needs to show a character that begins before a span and ends in it."""
    lo = max(0, first - n)
    return target[lo:first][doc_idx[lo:first] == doc_idx[first]]


def top_spans(doc_id, pos, nll_b, nll_o, max_len: int = 64, per_doc: int = 1, k: int = 20,
              vocab: pa.Table | None = None, target=None) -> dict:
    """Contiguous runs of at most `max_len` scored tokens within a document with the largest summed delta each way
    (at most `per_doc` non-overlapping ones per document): doc_id, first/last pos, summed delta and both models'
    NLL sums, and the text when `vocab` and `target` are given (decoded as a whole, special tokens by name)."""
    doc_id, pos = np.asarray(doc_id), np.asarray(pos)
    order = np.lexsort((pos, doc_id))
    doc_id, pos = doc_id[order], pos[order]
    nll_b = np.asarray(nll_b, dtype=np.float64)[order]
    nll_o = np.asarray(nll_o, dtype=np.float64)[order]
    target = np.asarray(target)[order] if target is not None else None
    delta = nll_o - nll_b
    doc_idx = np.unique(doc_id, return_inverse=True)[1]
    texts = TokenTexts.of(vocab) if vocab is not None and target is not None else None
    out = {}
    for direction, sign in (("other_worse", 1.0), ("other_better", -1.0)):
        spans = [(first, last, float(delta[first:last + 1].sum()))
                 for first, last in _greedy_spans(sign * delta, doc_idx, max_len, per_doc)]
        spans.sort(key=lambda s: (-sign * s[2], int(doc_id[s[0]]), int(pos[s[0]])))
        rows = []
        for first, last, total in spans[:k]:
            row = {"doc_id": int(doc_id[first]), "first_pos": int(pos[first]), "last_pos": int(pos[last]),
                   "n_tokens": last - first + 1, "delta_sum": total,
                   "nll_sum_base": float(nll_b[first:last + 1].sum()),
                   "nll_sum_other": float(nll_o[first:last + 1].sum())}
            if texts is not None:
                row["text"] = "".join(texts.span(target[first:last + 1], before_in_document(target, doc_idx, first)))
            rows.append(row)
        out[direction] = rows
    return out
