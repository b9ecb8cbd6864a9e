"""Where in a document a token is: position buckets that double in width (1, 2, 3, 4, 5-8, ..., 513-1024, >1024),
the loss by position, and leakage, the causal - block difference of the same tokens by position (docs/design.md,
contract 2: both masks score the same tokens)."""

from __future__ import annotations

import numpy as np

from ..formats.schema import ALL_POSITIONS

BUCKET_LOWS = np.array([1, 2, 3, 4, 5, 9, 17, 33, 65, 129, 257, 513, 1025])
BUCKET_HIGHS = np.array([1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, np.iinfo(np.int64).max])


def bucket_labels() -> list[str]:
    labels = []
    for lo, hi in zip(BUCKET_LOWS, BUCKET_HIGHS, strict=True):
        labels.append(str(lo) if lo == hi else (f">{lo - 1}" if hi > 1e12 else f"{lo}-{hi}"))
    return labels


EARLY_BUCKETS = tuple(bucket_labels()[:4])  # positions 1-4: where cross-document leakage acts


def position_bucket(pos: np.ndarray) -> np.ndarray:
    """Bucket index of target positions within their document: 1, 2, 3, 4, 5-8, 9-16, ..., 513-1024, >1024."""
    return np.searchsorted(BUCKET_LOWS, pos, side="right") - 1


def leakage_by_position(block: dict, causal: dict) -> list[dict]:
    """Per position bucket: causal - block NLL of the same tokens (the same scored set: docs/design.md, contract 2)."""
    if not (np.array_equal(block["doc_id"], causal["doc_id"]) and np.array_equal(block["pos"], causal["pos"])):
        raise ValueError("block and causal runs scored different tokens")
    diff = causal["nll"].astype(np.float64) - block["nll"].astype(np.float64)
    buckets = position_bucket(block["pos"])
    total_abs = float(np.abs(diff).sum())
    rows = []
    for i, label in enumerate(bucket_labels()):
        sel = buckets == i
        n = int(sel.sum())
        if n == 0:
            continue
        rows.append({
            "bucket": label, "n_tokens": n, "share_tokens": n / diff.size,
            "mean_block": float(block["nll"][sel].mean()), "mean_causal": float(causal["nll"][sel].mean()),
            "mean_diff": float(diff[sel].mean()), "mean_abs_diff": float(np.abs(diff[sel]).mean()),
            "share_of_abs_diff": float(np.abs(diff[sel]).sum() / total_abs) if total_abs else float("nan"),
        })
    rows.append({"bucket": ALL_POSITIONS, "n_tokens": int(diff.size), "share_tokens": 1.0,
                 "mean_block": float(block["nll"].mean()), "mean_causal": float(causal["nll"].mean()),
                 "mean_diff": float(diff.mean()), "mean_abs_diff": float(np.abs(diff).mean()),
                 "share_of_abs_diff": 1.0})
    return rows


def position_profile(tokens: dict) -> list[dict]:
    """Mean NLL by position bucket within the document."""
    buckets = position_bucket(tokens["pos"])
    rows = []
    for i, label in enumerate(bucket_labels()):
        sel = buckets == i
        if sel.any():
            rows.append({"bucket": label, "n_tokens": int(sel.sum()), "mean_nll": float(tokens["nll"][sel].mean())})
    return rows
