"""Execution plans: how rows become batches and batches become hidden states. Every plan keeps contracts 2-4 of
docs/design.md: the same scored tokens, and the same per-token NLL as `dense` within the dtype's tolerance.

- dense: the model's forward with an explicit 4D additive mask (what the seed did, minus `labels=`): the reference.
- docs: every document segment in a row of its own, rows bucketed by length, plain causal attention with no mask
  tensor: no attention is computed between documents at all (block mask only).
- nomask: the causal (leaky) mask as plain causal attention over packed rows, no mask tensor, so SDPA takes its
  fast path (needs running position ids: restarting ones make transformers build a document mask itself).
- flex: FlexAttention with a document BlockMask built once per batch (CUDA only).
- varlen: packed rows flattened into one stream cut at segment boundaries, variable-length attention within each
  segment (PyTorch's flash varlen kernel on CUDA in bf16/fp16, SDPA per segment elsewhere): no mask, no padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..data.layout import Batch, Row, collate, isolate_segments, length_buckets
from ..errors import UsageError
from .devices import require_cuda_for_flex
from .lean import lean_forwards
from .masks import additive_mask
from .varlen import cumulative_lengths, register

PAD_MULTIPLE = 16  # docs plan: row lengths rounded up to a multiple the matmul and attention kernels like


class Plan:
    """Shared plumbing; subclasses choose how rows are batched and what mask the model gets."""

    name = "plan"
    isolates_documents = False  # True: no document ever attends to another, whatever the mask
    attn_implementation: str | None = None  # the transformers attention this plan needs (None: the model's own)
    lean = True  # norms and gated MLPs on engine/lean.py's in-place forwards (bit for bit the model's own)

    def __init__(self, model: torch.nn.Module, mask: str, position_mode: str, k: int, batch_size: int = 1,
                 batch_tokens: int | None = None):
        self.model = model
        self.mask = mask
        self.position_mode = position_mode
        self.k = k
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        layer_types = getattr(model.config, "layer_types", None) or []
        # models with sliding-window layers take one mask per layer type; a single mask would skip the window
        self.sliding_window = (getattr(model.config, "sliding_window", None) if "sliding_attention" in layer_types
                               else None)

    @contextmanager
    def attention(self) -> Iterator[None]:
        """The model on this plan's attention implementation inside the block, and back on the one it had after it:
        the model's own forward (the head check, another plan on the same model) never runs a plan's attention, and
        nothing is left on the model. A loop over many batches enters once; each batch enters again at no cost."""
        before = self.model.config._attn_implementation
        wanted = self.attn_implementation
        if wanted is None or wanted == before:
            yield
            return
        self.model.set_attn_implementation(wanted)
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)

    pad_multiple = 1

    def groups(self, rows: list[Row]) -> Iterator[list[Row]]:
        """The rows of one window, grouped into batches: consecutive groups of batch_size."""
        for i in range(0, len(rows), self.batch_size):
            yield rows[i : i + self.batch_size]

    def collate(self, group: list[Row], k: int | None = None) -> Batch:
        """The batch of these rows scoring label offset k (the plan's own by default)."""
        return collate(group, self.k if k is None else k, self.position_mode, pad_multiple=self.pad_multiple)

    def batches(self, rows: list[Row]) -> Iterator[Batch]:
        for group in self.groups(rows):
            yield self.collate(group)

    def attention_mask(self, batch: Batch):
        return None

    def attention_inputs(self, batch: Batch) -> dict:
        """What the model's attention needs besides ids and positions: a mask, by default."""
        return {"attention_mask": self.attention_mask(batch)}

    @torch.inference_mode()
    def hidden_states(self, batch: Batch) -> torch.Tensor:
        """Final-norm hidden states [B, L, D] for every position of the batch."""
        with self.attention(), lean_forwards(self.model, self.lean):
            out = self.model.base_model(
                input_ids=batch.input_ids.to(self.device),
                position_ids=batch.position_ids.to(self.device),
                use_cache=False,
                **self.attention_inputs(batch),
            )
        return out.last_hidden_state


class DensePlan(Plan):
    """Reference: 4D float mask (B,1,T,T), or (B,H,T,T) with mask_heads, through the model's own attention."""

    name = "dense"

    def __init__(self, *args, mask_heads: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.heads = self.model.config.num_attention_heads if mask_heads else None

    def attention_mask(self, batch: Batch):
        segment_ids = batch.segment_ids.to(self.device)
        full = additive_mask(segment_ids, self.mask, self.dtype, self.heads)
        if self.sliding_window is None:
            return full
        sliding = additive_mask(segment_ids, self.mask, self.dtype, self.heads, self.sliding_window)
        return {"full_attention": full, "sliding_attention": sliding}


class DocsPlan(Plan):
    """Each segment alone, length-bucketed under a token budget; causal attention with right padding needs no mask
    (a real query never sees a later, padded key)."""

    name = "docs"
    pad_multiple = PAD_MULTIPLE
    isolates_documents = True

    def groups(self, rows: list[Row]) -> Iterator[list[Row]]:
        budget = self.batch_tokens or self.batch_size * max(r.length for r in rows)
        yield from length_buckets(isolate_segments(rows), budget, self.pad_multiple)


class NoMaskPlan(Plan):
    """The leaky causal mask as the model's default causal attention over packed rows."""

    name = "nomask"


def flex_mask_mod(segment_ids: torch.Tensor, mode: str, window: int | None = None):
    """FlexAttention mask_mod with masks.allowed_pairs' semantics: same document (block) or any real key (causal),
    k <= q, within the sliding window if one is given; a padding query attends to itself."""
    block = mode == "block"

    def document_causal(b, h, q, kv):
        same = (segment_ids[b, q] == segment_ids[b, kv]) if block else (segment_ids[b, kv] >= 0)
        allowed = (kv <= q) & same & (segment_ids[b, q] >= 0)
        if window is not None:
            allowed = allowed & (q - kv < window)
        return allowed | (q == kv)

    return document_causal


def document_block_mask(segment_ids: torch.Tensor, mode: str, window: int | None = None):
    """The BlockMask of flex_mask_mod, built by a compiled kernel block by block: built eagerly it materialises the
    [B, L, L] mask first (1.3 GB for 2 rows of 8192 tokens, 0.6 s on the CPU; compiled: 0.06 s, nothing)."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = segment_ids.shape
    return create_block_mask(flex_mask_mod(segment_ids, mode, window), rows, None, length, length,
                             device=segment_ids.device, _compile=True)


class FlexPlan(Plan):
    """FlexAttention with a block-diagonal causal BlockMask, and a sliding-window one for models with such layers
    (CUDA only)."""

    name = "flex"
    attn_implementation = "flex_attention"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        require_cuda_for_flex(self.device, "--plan flex", "use --plan docs or --plan dense")

    def attention_mask(self, batch: Batch):
        seg = batch.segment_ids.to(self.device)
        if self.sliding_window is None:
            return document_block_mask(seg, self.mask)
        return {"full_attention": document_block_mask(seg, self.mask),
                "sliding_attention": document_block_mask(seg, self.mask, self.sliding_window)}


class VarlenPlan(Plan):
    """Packed rows through variable-length attention: each segment attends to itself only (block mask)."""

    name = "varlen"
    isolates_documents = True
    attn_implementation = register()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.model.config
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            raise UsageError(f"--plan varlen: {cfg.model_type} soft-caps attention scores, which varlen kernels do not",
                             "use --plan docs (or flex on CUDA)")
        if self.sliding_window is not None:
            raise UsageError(f"--plan varlen: {cfg.model_type} has sliding-window layers, which this plan does not "
                             "apply", "use --plan docs (or flex on CUDA)")

    def attention_inputs(self, batch: Batch) -> dict:
        """No mask: the document boundaries, which transformers hands to the attention function."""
        cu_seq, longest = cumulative_lengths(batch.segment_ids)
        return {"cu_seq_lens_q": cu_seq.to(self.device), "max_length_q": longest}


def choose_plan(name: str, mask: str, position_mode: str, device: torch.device, layout: str = "packed") -> str:
    """`auto`: the fastest plan valid for this device, mask, positions and layout; an explicit name is checked.
    With one document per row (layout single) the block and causal masks are the same, so `docs` serves both.

    Documents apart: `varlen` on a CPU (AVX2-only EPYC, fp32: 430 against docs' 360 tok/s; avx512_bf16 EPYC and AMX
    Xeon: at par in fp32 and bf16, benchmarks/RESULTS.md), `docs` on CUDA until a GPU has measured both. A model
    varlen cannot serve (sliding-window or soft-capped attention) takes `docs` (auto_fallback)."""
    apart = mask == "block" or layout == "single"
    if name == "auto":
        if apart:
            return "varlen" if device.type == "cpu" else "docs"
        return "nomask" if position_mode == "continuous" else "dense"
    if name == "flex":
        require_cuda_for_flex(device, "--plan flex", "use --plan docs or --plan dense")
    if name in ("docs", "varlen") and not apart:
        raise UsageError(f"--plan {name} scores documents apart: it needs --mask block or --layout single",
                         "use --plan nomask or dense")
    if name == "nomask" and (mask != "causal" or position_mode != "continuous"):
        raise UsageError("--plan nomask needs --mask causal with continuous positions",
                         "use --plan dense for other combinations")
    return name


AUTO_FALLBACK = {"varlen": "docs"}  # what `auto` takes when its first choice refuses the model


def make_plan(name: str, model: torch.nn.Module, mask: str, position_mode: str, k: int, batch_size: int,
              batch_tokens: int | None = None, mask_heads: bool = False) -> Plan:
    classes = {"dense": DensePlan, "docs": DocsPlan, "nomask": NoMaskPlan, "flex": FlexPlan, "varlen": VarlenPlan}
    kwargs = {"mask_heads": mask_heads} if name == "dense" else {}
    return classes[name](model, mask, position_mode, k, batch_size, batch_tokens, **kwargs)
