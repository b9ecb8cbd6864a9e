"""Per-token NLL in fp32 from hidden states, applying the output head in tiles (contract 5: no [B, T, V] logits).

The head is tiled over the vocabulary as well as over tokens, with a running log-sum-exp (as in flash attention):
one slice of the output matrix is read once per batch and stays in cache while every token chunk passes through it.
Chunking tokens alone re-reads the whole matrix (57 MB for SmolLM2, 1 GB for Llama 3) for every chunk, which made
the head memory-bound: on a 2-core Xeon the head's matmul ran at 0.9 TFLOP/s that way and 2.6 tiled (bf16 peak
2.4), and the whole head went from 380 to 195 ms per 4,096 tokens (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ModelError

# On the CPU one tile's logits should stay in cache: 4,096 vocabulary entries by 512 tokens (16 MiB at 8 bytes an
# entry) was fastest on a 2-core Xeon; twice either side fell out of cache and took twice as long.
CPU_TILE_BYTES = 16 << 20
VOCAB_TILE = {"cpu": 4096, "cuda": 16384}
BYTES_PER_LOGIT = 8  # the tile's logits in the model's dtype plus their fp32 copy


class OutputHead:
    """The model's output projection plus its logit transforms (Gemma soft-capping, Cohere/Granite scaling)."""

    def __init__(self, model: torch.nn.Module, chunk_mb: int = 256):
        self.model = model
        self.proj = model.get_output_embeddings()
        cfg = model.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.scale = getattr(cfg, "logit_scale", None) if cfg.model_type.startswith("cohere") else None
        self.divide = getattr(cfg, "logits_scaling", None) if cfg.model_type.startswith("granite") else None
        self.vocab = self.proj.weight.shape[0]
        device = self.proj.weight.device.type
        budget = chunk_mb << 20
        if device == "cpu":
            budget = min(budget, CPU_TILE_BYTES)
        # a projection that is not a plain Linear (quantized, wrapped) is applied whole: one tile spans the vocabulary
        tiled = type(self.proj) is torch.nn.Linear
        self.vocab_tile = min(self.vocab, VOCAB_TILE.get(device, VOCAB_TILE["cuda"])) if tiled else self.vocab
        self.chunk_tokens = max(1, budget // (self.vocab_tile * BYTES_PER_LOGIT))

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits as the model's own forward computes them (in its dtype, transforms included)."""
        return self._transform(self.proj(hidden))

    def _tile_logits(self, hidden: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Logits of vocabulary entries lo..hi, in the model's dtype, as its forward rounds them."""
        if lo == 0 and hi == self.vocab:
            return self.logits(hidden)
        bias = self.proj.bias
        return self._transform(F.linear(hidden, self.proj.weight[lo:hi], None if bias is None else bias[lo:hi]))

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NLL in nats of targets[i] given hidden[i], fp32, [N] -> [N]: log-sum-exp of the logits minus the target's."""
        n = targets.shape[0]
        run_max = torch.full((n,), float("-inf"), dtype=torch.float32, device=hidden.device)
        sum_exp = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        target_logit = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lowest = torch.finfo(torch.float32).min  # keeps an all -inf tile from giving inf - inf
        for lo in range(0, self.vocab, self.vocab_tile):
            hi = min(lo + self.vocab_tile, self.vocab)
            for start in range(0, n, self.chunk_tokens):
                rows = slice(start, start + self.chunk_tokens)
                logits = self._tile_logits(hidden[rows], lo, hi).float()
                local = targets[rows] - lo
                inside = (local >= 0) & (local < hi - lo)
                picked = logits.gather(1, local.clamp(0, hi - lo - 1)[:, None])[:, 0]
                target_logit[rows] = torch.where(inside, picked, target_logit[rows])
                old_max = run_max[rows]
                new_max = torch.maximum(old_max, logits.amax(1)).clamp_min(lowest)
                tile_sum = logits.sub_(new_max[:, None]).exp_().sum(1)  # in place: the tile is ours
                sum_exp[rows] = sum_exp[rows] * torch.exp(old_max - new_max) + tile_sum
                run_max[rows] = new_max
        return run_max + torch.log(sum_exp) - target_logit

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
