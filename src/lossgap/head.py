"""Per-token NLL in fp32 from hidden states, applying the output head in chunks (contract 5: no [B, T, V] logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ModelError

# On the CPU a chunk's fp32 logits should stay in cache: 24 MiB chunks (128 tokens at V=49k) made the head 1.6x faster
# than 256 MB ones on a 2-core Xeon (matmul, upcast and log-softmax then reuse cached data; benchmarks/RESULTS.md).
CPU_CHUNK_BYTES = 24 << 20


class OutputHead:
    """The model's output projection plus its logit transforms (Gemma soft-capping, Cohere/Granite scaling)."""

    def __init__(self, model: torch.nn.Module, chunk_mb: int = 256):
        self.model = model
        self.proj = model.get_output_embeddings()
        cfg = model.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.scale = getattr(cfg, "logit_scale", None) if cfg.model_type.startswith("cohere") else None
        self.divide = getattr(cfg, "logits_scaling", None) if cfg.model_type.startswith("granite") else None
        vocab = self.proj.weight.shape[0]
        # fp32 logits, their softmax workspace and the model-dtype logits: about 3 copies of V floats a token
        self.chunk_tokens = max(1, (chunk_mb << 20) // (vocab * 4 * 3))
        if self.proj.weight.device.type == "cpu":
            self.chunk_tokens = min(self.chunk_tokens, max(16, CPU_CHUNK_BYTES // (vocab * 4)))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits as the model's own forward computes them (in its dtype, transforms included)."""
        logits = self.proj(hidden)
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NLL in nats of targets[i] given hidden[i], fp32, [N] -> [N]."""
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
        for lo in range(0, targets.shape[0], self.chunk_tokens):
            hi = lo + self.chunk_tokens
            logits = self.logits(hidden[lo:hi]).float()
            out[lo:hi] = F.cross_entropy(logits, targets[lo:hi], reduction="none")
        return out

    @torch.inference_mode()
    def verify(self, vocab_size: int, tol: float | None = None) -> float:
        """Compare head(base_model(x)) with the model's own logits on a short input; refuse a mismatch.

        This catches output transforms this class does not know about, for any architecture.
        """
        device = self.proj.weight.device
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size, (1, 8), generator=gen).to(device)
        full = self.model(input_ids=ids, use_cache=False).logits.float()
        hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        mine = self.logits(hidden).float()
        diff = (full - mine).abs().max().item()
        if tol is None:
            tol = 1e-4 if self.proj.weight.dtype == torch.float32 else 5e-2
        if not diff <= tol * max(1.0, full.abs().max().item()):
            raise ModelError(
                f"{self.model.config.model_type}: the output head does not reproduce the model's logits "
                f"(max diff {diff:.3g}); this architecture has a logit transform lossgap does not know",
                "report the model type to lossgap",
            )
        return diff
