"""The temperature that minimises a model's NLL on a sample of scored tokens: beta = 1/T fitted by Newton's method on
the convex function

    F(beta) = mean_i [logsumexp_v(beta z_iv) - beta z_iy]    F' = mean_i (E_p[z_i] - z_iy)    F'' = mean_i Var_p[z_i]

(p the softmax of beta z_i; z the logits as the model's head gives them, transforms included, in float32 as the NLL
path upcasts them). Every sum is taken in float64 over the whole vocabulary row of a chunk of tokens, so F, F' and
F'' are exact for the float32 logits. The logits of the sample are kept (float32) when they fit in `logit_bytes`;
otherwise the hidden states are, and each Newton step recomputes the logits from them, one chunk at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .forward import scored_hidden

LOGIT_BYTES = 1 << 30  # the sample's float32 logits are kept up to this size, else recomputed at each step
# float64 scratch per [tokens, V] tensor of a chunk: on the CPU small enough to stay in cache (2 MiB: 3x faster than
# 20 MiB on a 2-core EPYC, where one step over 5,000 tokens of a 4,096-entry vocabulary took 0.5 s against 1.7 s)
CHUNK_BYTES = {"cpu": 2 << 20, "cuda": 256 << 20}
STEP_TOLERANCE = 1e-10  # Newton stops once its step is below this share of beta: beta is then exact to ~1e-20
MAX_STEPS = 60
BETA_MAX = 1e4  # a sample whose targets are every model's argmax has no finite optimum: beta stops here
GROWTH = 4.0  # with no upper bracket yet, a step multiplies beta by at most this


@dataclass
class ScoredSample:
    """One model's scored positions of the sample's batches: hidden states (or float32 logits), targets, documents."""

    hidden: torch.Tensor  # [N, D] in the model's dtype
    targets: torch.Tensor  # [N] int64
    doc_ids: np.ndarray  # [N] int64


@dataclass
class TemperatureFit:
    beta: float  # 1 / T
    steps: int  # evaluations of F (each one pass over the sample's logits)
    converged: bool
    logits_kept: bool  # False: recomputed from the hidden states at every step
    nll: np.ndarray  # [N] float64, at T = 1
    nll_tempered: np.ndarray  # [N] float64, at the fitted T

    @property
    def temperature(self) -> float:
        return 1.0 / self.beta if self.beta > 0 else math.inf


@torch.inference_mode()
def scored_sample(plan, head, batches: list) -> ScoredSample:
    """The hidden states of the positions that predict each batch's targets (forward.scored_hidden), on the head's
    device, concatenated over the batches."""
    device = head.proj.weight.device
    hidden, targets, docs = [], [], []
    for batch in batches:
        hidden.append(scored_hidden(plan, batch).to(device))
        targets.append(batch.targets.to(device))
        docs.append(batch.doc_ids)
    if not hidden:
        return ScoredSample(torch.zeros(0, head.proj.weight.shape[1], device=device),
                            torch.zeros(0, dtype=torch.int64, device=device), np.zeros(0, np.int64))
    return ScoredSample(torch.cat(hidden), torch.cat(targets), np.concatenate(docs))


class _Logits:
    """The sample's float32 logits chunk by chunk: kept whole when they fit, else recomputed from the hidden states."""

    def __init__(self, head, hidden: torch.Tensor, logit_bytes: int):
        self.head, self.n, self.vocab = head, hidden.shape[0], head.vocab
        budget = CHUNK_BYTES.get(hidden.device.type, CHUNK_BYTES["cuda"])
        self.chunk = max(1, budget // (8 * self.vocab))
        self.kept = self.n * self.vocab * 4 <= logit_bytes
        if self.kept:
            self.logits = torch.cat([self._compute(hidden[rows]) for rows in self._rows()]) if self.n else None
            self.hidden = None
        else:
            self.hidden = hidden

    def _rows(self) -> Iterator[slice]:
        for start in range(0, self.n, self.chunk):
            yield slice(start, min(start + self.chunk, self.n))

    def _compute(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.tile_logits(hidden, 0, self.vocab).float()

    def chunks(self) -> Iterator[tuple[slice, torch.Tensor]]:
        for rows in self._rows():
            yield rows, self.logits[rows] if self.kept else self._compute(self.hidden[rows])


def _moments(z: torch.Tensor, targets: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token, in float64: NLL at beta (logsumexp(beta z) - beta z_y), E_p[z] - z_y and Var_p[z]."""
    z = z.double()
    zy = z.gather(1, targets[:, None])[:, 0]
    x = z * beta
    m = x.amax(1, keepdim=True)
    e = (x - m).exp_()
    s = e.sum(1)
    mean = (e * z).sum(1) / s
    var = (e * (z - mean[:, None]).square_()).sum(1) / s  # two passes: no cancellation of E[z^2] - E[z]^2
    nll = m[:, 0] + s.log() - beta * zy
    return nll, mean - zy, var


def newton(evaluate: Callable[[float], tuple[float, float]], beta: float = 1.0) -> tuple[float, int, bool]:
    """The minimiser over beta >= 0 of a convex F whose derivatives evaluate(beta) returns as (F', F''): Newton's
    method kept inside a bracket [lo, hi] of the minimiser (F' < 0 at lo, > 0 at hi), bisecting where a Newton step
    leaves it. Returns (beta, evaluations, converged): the last beta evaluated, once the step it asks for is below
    STEP_TOLERANCE of it; or 0 where F' >= 0 at 0 (the uniform distribution beats every temperature: a model that
    ranks the targets no better than chance), checked once a step asks for beta <= 0."""
    lo, hi = 0.0, math.inf
    evaluations, zero_checked = 0, False
    for _ in range(MAX_STEPS):
        grad, curv = evaluate(beta)
        evaluations += 1
        if grad == 0:
            return beta, evaluations, True
        if grad < 0:
            lo = beta
        else:
            hi = beta
        proposed = beta - grad / curv if curv > 0 else math.nan
        if abs(proposed - beta) <= STEP_TOLERANCE * beta:
            return beta, evaluations, True
        if lo == 0 and not proposed > 0 and not zero_checked:
            evaluations, zero_checked = evaluations + 1, True
            if evaluate(0.0)[0] >= 0:
                return 0.0, evaluations, True
        if not lo < proposed < hi:
            proposed = (lo + hi) / 2 if math.isfinite(hi) else beta * GROWTH
        if math.isinf(hi):
            proposed = min(proposed, beta * GROWTH)
        if proposed > BETA_MAX:
            return beta, evaluations, False
        beta = proposed
    return beta, evaluations, False


@torch.inference_mode()
def fit_temperature(head, sample: ScoredSample, logit_bytes: int = LOGIT_BYTES) -> TemperatureFit:
    """beta = 1/T minimising the mean NLL of the sample's targets under the head's logits scaled by beta; the per-token
    NLL at T = 1 and at the fitted T."""
    logits = _Logits(head, sample.hidden, logit_bytes)
    n = sample.targets.shape[0]
    kept: dict[str, tuple[float, torch.Tensor]] = {}

    def evaluate(beta: float) -> tuple[float, float]:
        nll = torch.empty(n, dtype=torch.float64, device=sample.targets.device)
        grad = curv = 0.0
        for rows, z in logits.chunks():
            nll[rows], g, v = _moments(z, sample.targets[rows], beta)
            grad, curv = grad + float(g.sum()), curv + float(v.sum())
        kept["last"] = (beta, nll)
        if beta == 1.0:
            kept["one"] = (beta, nll)
        return grad / n, curv / n

    if n == 0:
        empty = np.zeros(0)
        return TemperatureFit(1.0, 0, True, logits.kept, empty, empty)
    beta, steps, converged = newton(evaluate)  # its first evaluation is at beta = 1: the NLL at T = 1
    if kept["last"][0] != beta:  # stopped without evaluating its last step
        evaluate(beta)
    return TemperatureFit(beta, steps, converged, logits.kept, kept["one"][1].cpu().numpy(),
                          kept["last"][1].cpu().numpy())
