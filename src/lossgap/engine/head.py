"""Per-token NLL in fp32 from hidden states, applying the output head in tiles (docs/design.md, contract 5: no
[B, T, V] logits).

The head is tiled over the vocabulary as well as over tokens, with a running log-sum-exp (as in flash attention):
one slice of the output matrix is read once per batch and stays in cache while every token chunk passes through it.
Chunking tokens alone re-reads the whole matrix (57 MB for SmolLM2, 1 GB for Llama 3) for every chunk, which made
the head memory-bound: on a 2-core Xeon the head's matmul ran at 0.9 TFLOP/s that way and 2.6 tiled (bf16 peak
2.4), and the whole head went from 380 to 195 ms per 4,096 tokens (benchmarks/RESULTS.md).

`--loss-kernel cce` (the default on CUDA when installed) hands the loss to Apple's Cut Cross-Entropy instead, which
fuses the matmul and the log-sum-exp and never writes logits to memory. It is used only after its per-token output
on the model's own hidden states proved no farther from a float64 computation than the tiled path's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..errors import ModelError, UsageError
from .headstats import stream_stats
from .tolerances import tolerance

# On the CPU one tile's logits should stay in cache: 4,096 vocabulary entries by 512 tokens (16 MiB at 8 bytes an
# entry) was fastest on a 2-core Xeon; twice either side fell out of cache and took twice as long.
CPU_TILE_BYTES = 16 << 20
VOCAB_TILE = {"cpu": 4096, "cuda": 16384}
BYTES_PER_LOGIT = 8  # the tile's logits in the model's dtype plus their fp32 copy
# the statistics beyond the NLL (headstats.py) also hold exp(z - m) and a comparison per logit, so their token chunk
# is half the NLL's: on SmolLM2's head in bf16 (2-core EPYC) they cost 1.10-1.17x the NLL so, 1.15-1.21x at its chunk
STATS_BYTES_PER_LOGIT = 16


def _plain_linear(proj: torch.nn.Module) -> bool:
    """A Linear whose weight rows can be sliced: no hooks (tensor parallel gathers), no distributed weight."""
    from torch.distributed.tensor import DTensor

    return (type(proj) is torch.nn.Linear and not isinstance(proj.weight, DTensor)
            and not proj._forward_hooks and not proj._forward_pre_hooks)


class OutputHead:
    """The model's output projection plus its logit transforms (Gemma soft-capping, Cohere/Granite scaling)."""

    def __init__(self, model: torch.nn.Module, chunk_mb: int = 256, kernel: str = "tiled"):
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
        # a projection that is not a plain Linear (quantized, wrapped, tensor parallel) is applied whole: one tile
        self.plain = _plain_linear(self.proj)
        self.vocab_tile = min(self.vocab, VOCAB_TILE.get(device, VOCAB_TILE["cuda"])) if self.plain else self.vocab
        self.chunk_tokens = max(1, budget // (self.vocab_tile * BYTES_PER_LOGIT))
        self.stats_tokens = max(1, budget // (self.vocab_tile * STATS_BYTES_PER_LOGIT))
        # CCE's own kernel holds no logits; its torch.compile form (off CUDA) holds a chunk's [tokens, V] logits
        self.cce_tokens = max(1, budget // (self.vocab * 12))
        self._cce = None
        if kernel == "cce" or (kernel == "auto" and device == "cuda"):
            self._cce = self._cce_loss(required=kernel == "cce")
        self.kernel = "cce" if self._cce is not None else "tiled"
        self.upcast = False  # the float32 check: every tile in float32 (engine/upcast.py), no float32 copy
        self.special_ids = torch.zeros(0, dtype=torch.int64)  # the control tokens p_special sums (the paired pass's)
        self._special_local: dict[tuple[int, int], torch.Tensor] = {}

    def set_special_ids(self, ids: list[int]) -> None:
        """The vocabulary entries whose probability the statistics stream sums as p_special."""
        self.special_ids = torch.tensor(sorted(set(ids)), dtype=torch.int64)
        self._special_local = {}

    def special_in(self, lo: int, hi: int) -> torch.Tensor:
        """The special entries within tile lo..hi, as indices into the tile (on the head's device)."""
        key = (lo, hi)
        if key not in self._special_local:
            ids = self.special_ids[(self.special_ids >= lo) & (self.special_ids < hi)] - lo
            self._special_local[key] = ids.to(self.proj.weight.device)
        return self._special_local[key]

    @contextlib.contextmanager
    def float32(self) -> Iterator[None]:
        """The head in float32 inside the block, tile by tile: the weight is upcast one vocabulary tile at a time
        (a head that is not a plain Linear runs its module, which engine/upcast.py upcasts)."""
        self.upcast = True
        try:
            yield
        finally:
            self.upcast = False

    def _cce_loss(self, required: bool):
        """Cut Cross-Entropy's per-token loss for this head, or None (an error if asked for) where it cannot serve."""
        reason = None
        if not self.plain or self.proj.bias is not None:
            reason = "the output projection is not a plain Linear without bias"
        elif self.scale is not None or self.divide is not None:
            reason = f"{self.model.config.model_type} scales its logits, which the kernel does not"
        else:
            try:
                from cut_cross_entropy import linear_cross_entropy
            except ImportError:
                reason = "cut-cross-entropy is not installed (pip install cut-cross-entropy; it needs triton)"
        if reason is not None:
            if required:
                raise UsageError(f"--loss-kernel cce: {reason}", "use --loss-kernel tiled")
            return None
        impl = "cce" if self.proj.weight.is_cuda else "torch_compile"
        return lambda hidden, targets: linear_cross_entropy(hidden, self.proj.weight, targets, softcap=self.softcap,
                                                            reduction="none", impl=impl)

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

    def tiles(self, n_tokens: int, chunk: int, width: int | None = None) -> Iterator[tuple[slice, int, int]]:
        """(token rows, first entry, end entry) of every tile of n_tokens tokens: vocabulary tiles of `width` entries
        (the head's own by default) outermost, `chunk` tokens each inside, so that one slice of the output matrix is
        read once per pass and stays in cache while every chunk of tokens passes through it."""
        width = width or self.vocab_tile
        for lo in range(0, self.vocab, width):
            hi = min(lo + width, self.vocab)
            for start in range(0, n_tokens, chunk):
                yield slice(start, start + chunk), lo, hi

    def tile_logits(self, hidden: torch.Tensor, lo: int, hi: int, exact: bool = False) -> torch.Tensor:
        """Logits of vocabulary entries lo..hi, in the model's dtype as its forward rounds them (exact: float64)."""
        if not self.plain:
            return self.logits(hidden).double() if exact else self.logits(hidden)
        weight, bias = self.proj.weight[lo:hi], self.proj.bias
        bias = None if bias is None else bias[lo:hi]
        if exact or self.upcast:
            wide = torch.float64 if exact else torch.float32
            hidden, weight = hidden.to(wide), weight.to(wide)
            bias = None if bias is None else bias.to(wide)
        return self._transform(F.linear(hidden, weight, bias))

    def target_logits(self, hidden: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """The logit of targets[i] given hidden[i] from the gathered weight rows, rounded to the model's dtype and
        transformed as a tile's are (fp32, float64 if exact): what a target's rank is counted against, before any
        tile is read. Plain Linear heads only."""
        weight, bias = self.proj.weight, self.proj.bias
        acc = torch.float64 if exact else torch.float32
        out = torch.empty(targets.shape[0], dtype=acc, device=hidden.device)
        for start in range(0, targets.shape[0], self.stats_tokens):
            rows = slice(start, start + self.stats_tokens)
            ids = targets[rows]
            dot = torch.linalg.vecdot(hidden[rows].to(acc), weight[ids].to(acc))
            if bias is not None:
                dot = dot + bias[ids].to(acc)
            out[rows] = self._transform(dot if exact or self.upcast else dot.to(weight.dtype)).to(acc)
        return out

    def token_stats(self, hidden: torch.Tensor, targets: torch.Tensor, metrics: tuple[str, ...] = ("nll",),
                    exact: bool = False) -> dict:
        """Per-token columns computed from the predictive distribution (columns.py, source "model"), [N] each: fp32
        (float64 if exact), argmax and rank int64 (headstats.METRICS). The NLL alone, with p_target = exp(-NLL), takes
        the NLL path (the fused kernel where in use); anything else takes one tiled pass that yields every metric,
        the NLL included (so with --loss-kernel cce the NLL then comes from the tiled pass, not the kernel)."""
        if set(metrics) <= {"nll", "p_target"}:
            nll = self._tiled_nll(hidden, targets, exact=True) if exact else self.nll(hidden, targets)
            return {name: nll if name == "nll" else torch.exp(-nll) for name in metrics}
        return stream_stats(self, hidden, targets, metrics, exact)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NLL in nats of targets[i] given hidden[i], fp32, [N] -> [N]."""
        if self._cce is not None and not self.upcast and (hidden.dtype != torch.float32 or not hidden.is_cuda):
            # the fused kernel in the run's dtype (fp32 on CUDA: the tiled path, no TF32)
            step = targets.shape[0] if hidden.is_cuda else self.cce_tokens
            parts = [self._cce(hidden[i : i + step], targets[i : i + step]).float()
                     for i in range(0, targets.shape[0], step)]
            return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
        return self._tiled_nll(hidden, targets)

    def _tiled_nll(self, hidden: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Log-sum-exp of the logits minus the target's, tile by tile (exact: in float64, for checks): the statistics
        stream with the NLL alone, in the NLL's larger token chunks."""
        return stream_stats(self, hidden, targets, ("nll",), exact, chunk=self.chunk_tokens)["nll"]

    @torch.inference_mode()
    def check_kernel(self, vocab_size: int, tokens: int = 128) -> dict | None:
        """Score the model's hidden states for random tokens with the fused kernel, the tiled path and float64. The
        kernel is kept only if no farther from float64 than the tiled path (plus a dtype tolerance); otherwise the
        head falls back to the tiled path and says why. None when no fused kernel is in use."""
        if self._cce is None:
            return None
        device = self.proj.weight.device
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, vocab_size, (1, tokens), generator=gen).to(device)
        targets = torch.randint(0, vocab_size, (tokens,), generator=gen).to(device)
        hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        exact = self._tiled_nll(hidden, targets, exact=True)
        plain = (self._tiled_nll(hidden, targets).double() - exact).abs().max().item()
        fused = (self.nll(hidden, targets).double() - exact).abs().max().item()
        passed = fused <= 1.5 * plain + tolerance("nll", hidden.dtype)
        result = {"kernel": "cce", "tokens": tokens, "max_abs_diff_vs_float64": fused,
                  "tiled_max_abs_diff_vs_float64": plain, "passed": passed}
        if not passed:
            self._cce, self.kernel = None, "tiled"
        return result

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
        if not (torch.isfinite(full).all() and torch.isfinite(mine).all()):
            name = getattr(self.model, "name_or_path", "") or self.model.config.model_type
            raise non_finite_logits(name, str(self.proj.weight.dtype).removeprefix("torch."), "on a short input")
        diff = (full - mine).abs().max().item()
        if tol is None:
            tol = tolerance("logits", self.proj.weight.dtype)
        if not diff <= tol * max(1.0, full.abs().max().item()):
            raise ModelError(
                f"{self.model.config.model_type}: the output head does not reproduce the model's logits "
                f"(max diff {diff:.3g}); this architecture has a logit transform lossgap does not know",
                "report the model type to lossgap",
            )
        return diff


def non_finite_logits(model_name: str, dtype: str, seen: str) -> ModelError:
    """inf or NaN in the logits of a model whose weights are finite (model.require_finite_weights), said as
    what it is: in float16 an overflow of its range, elsewhere a broken model or a precision too low for it."""
    msg = f"{model_name}: inf/NaN in the model's logits {seen} in {dtype}, from finite weights"
    if dtype == "float16":
        return ModelError(f"{msg}: its activations overflow float16's range (largest value 65504)",
                          "use --dtype bfloat16 (float32's range) or --dtype float32")
    if dtype != "float32":
        return ModelError(msg, "use --dtype float32")
    return ModelError(f"{msg}: the model itself computes them", "check the model's weights and config.json")
