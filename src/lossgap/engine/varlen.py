"""Variable-length attention over packed rows: every document segment attends only to itself, with no mask tensor
and no padding. The rows of a batch are flattened into one token stream cut at segment boundaries (cumulative
lengths, as flash-attn's varlen kernels take them).

On CUDA in bf16/fp16 this runs PyTorch's own flash varlen kernel (`torch.nn.attention.varlen.varlen_attn`, no
flash-attn install needed); elsewhere each segment goes through SDPA on its own, which computes the same thing.
It plugs into transformers as a registered attention implementation, so the model's own projections, rotary
embedding and norms run unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTN_NAME = "lossgap_varlen"


def cumulative_lengths(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Boundaries of the runs of equal segment ids in the flattened [B, L] batch (a row start always cuts), as int32
    cumulative lengths, and the longest run. Padding runs (-1) become runs of their own, scored nowhere."""
    batch, length = segment_ids.shape
    flat = segment_ids.reshape(-1)
    cut = torch.ones_like(flat, dtype=torch.bool)
    cut[1:] = flat[1:] != flat[:-1]
    cut[::length] = True
    starts = torch.nonzero(cut).flatten()
    bounds = torch.cat([starts, torch.tensor([batch * length])])
    return bounds.to(torch.int32), int((bounds[1:] - bounds[:-1]).max())


def segment_attention(query, key, value, cu_seq: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal attention within each run of [T, H, D] tensors, one SDPA call per run (any device and dtype)."""
    out = torch.empty_like(query)
    bounds = cu_seq.tolist()
    gqa = query.shape[1] != key.shape[1]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        # 4D [1, H, n, D]: with 3D inputs and grouped KV heads the CPU takes SDPA's math path, 25x slower
        q, k, v = (x[None, start:end].transpose(1, 2) for x in (query, key, value))
        out[start:end] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                        enable_gqa=gqa)[0].transpose(0, 1)
    return out


@torch.compiler.disable  # --compile: a graph break here; the per-segment loop and its int bounds stay eager
def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     max_length_q=None, **kwargs):
    """transformers attention function: query [B, H, L, D], key/value [B, Hkv, L, D] -> output [B, L, H, D]."""
    if cu_seq_lens_q is None:
        raise RuntimeError("varlen attention needs cu_seq_lens_q: run the model through lossgap's varlen plan")
    batch, heads, length, dim = query.shape
    q, k, v = (x.transpose(1, 2).reshape(batch * length, x.shape[1], dim) for x in (query, key, value))
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_seq_lens_q.to(q.device)
        out = varlen_attn(q, k, v, cu, cu, max_length_q, max_length_q, scale=scaling, window_size=(-1, 0),
                          enable_gqa=heads != k.shape[1])
    else:
        out = segment_attention(q, k, v, cu_seq_lens_q, scaling)
    return out.reshape(batch, length, heads, dim), None


def register() -> str:
    """Make the implementation known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention)
    return ATTN_NAME
