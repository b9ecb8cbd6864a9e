"""The temperature fit (engine/temperature.py) against an independent float64 computation: scipy's bounded scalar
minimiser on the same float32 logits in float64; kept and recomputed logits agreeing; a head whose weight is doubled
(logits exactly twice the other's) fitting exactly half the beta; and the Newton iteration's own guards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from transformers import AutoModelForCausalLM

from lossgap.engine import temperature
from lossgap.engine.head import OutputHead
from lossgap.engine.temperature import ScoredSample, fit_temperature, newton


@pytest.fixture(scope="module")
def sample(tiny_models):
    """A tiny Llama's hidden states for 200 random positions (5 documents of 40), and targets drawn half from the
    model's own top-3 (a model that ranks well) and half uniformly."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (1, 201), generator=gen)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        head = OutputHead(model)
        top3 = head.logits(hidden).topk(3, dim=1).indices
    pick = torch.randint(0, 3, (200,), generator=gen)
    uniform = torch.randint(0, model.config.vocab_size, (200,), generator=gen)
    targets = torch.where(torch.arange(200) % 2 == 0, top3[torch.arange(200), pick], uniform)
    return model, ScoredSample(hidden, targets, np.repeat(np.arange(5), 40))


def _float64_fit(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """beta minimising the mean NLL of logits * beta, by scipy on float64 logits; the per-token NLL there."""
    zy = logits[np.arange(targets.size), targets]

    def mean_nll(beta: float) -> float:
        return float(np.mean(logsumexp(beta * logits, axis=1) - beta * zy))

    found = minimize_scalar(mean_nll, bounds=(1e-3, 50.0), method="bounded", options={"xatol": 1e-12})
    beta = float(found.x)
    return beta, logsumexp(beta * logits, axis=1) - beta * zy


def _logits64(head: OutputHead, hidden: torch.Tensor, exact: bool = False) -> np.ndarray:
    """The whole vocabulary's logits in float64: the head's float32 logits widened, or (exact) float64 throughout."""
    with torch.no_grad():
        logits = head.tile_logits(hidden, 0, head.vocab, exact=exact)
    return logits.numpy() if exact else logits.float().double().numpy()


def test_the_newton_fit_equals_scipy_on_float64_logits(sample):
    model, s = sample
    head = OutputHead(model)
    fit = fit_temperature(head, s)
    beta, nll = _float64_fit(_logits64(head, s.hidden), s.targets.numpy())
    assert fit.converged and fit.logits_kept and fit.steps <= 10
    assert fit.beta == pytest.approx(beta, rel=1e-6)
    assert fit.temperature == pytest.approx(1 / beta, rel=1e-6)
    # per token, at the fitted beta, the float64 evaluation of the same float32 logits
    logits = _logits64(head, s.hidden)
    zy = logits[np.arange(s.targets.numel()), s.targets.numpy()]
    assert np.abs(fit.nll_tempered - (logsumexp(fit.beta * logits, axis=1) - fit.beta * zy)).max() < 1e-12
    assert fit.nll_tempered.mean() == pytest.approx(nll.mean(), abs=1e-12)  # the minimum: flat in beta
    # and against float64 logits (float32 rounding of the logits apart)
    exact_beta, _ = _float64_fit(_logits64(head, s.hidden, exact=True), s.targets.numpy())
    assert fit.beta == pytest.approx(exact_beta, rel=1e-5)
    assert fit.nll_tempered.mean() <= fit.nll.mean()  # the fitted temperature is never worse than T = 1 here
    # at T = 1 the NLL is the head's own (the float32 streamed path) to float32 rounding
    with torch.no_grad():
        own = head.token_stats(s.hidden, s.targets)["nll"].double().numpy()
    assert np.abs(fit.nll - own).max() < 1e-5


def test_logits_recomputed_at_every_step_give_the_same_fit(sample):
    model, s = sample
    head = OutputHead(model)
    kept = fit_temperature(head, s)
    recomputed = fit_temperature(head, s, logit_bytes=0)
    assert not recomputed.logits_kept
    assert recomputed.beta == pytest.approx(kept.beta, rel=1e-12)
    assert np.abs(recomputed.nll_tempered - kept.nll_tempered).max() < 1e-12


def test_logits_exactly_doubled_fit_half_the_beta_and_the_same_tempered_nll(sample, monkeypatch):
    """A copy with the output weight times 2 (its logits exactly twice the original's): T twice the original's, and
    at the fitted temperatures both give the same NLL; small chunks, so the sums run over several."""
    model, s = sample
    monkeypatch.setattr(temperature, "CHUNK_BYTES", dict.fromkeys(("cpu", "cuda"), 8 * model.config.vocab_size * 64))
    sharp = AutoModelForCausalLM.from_config(model.config).eval()
    sharp.load_state_dict(model.state_dict())
    with torch.no_grad():
        sharp.lm_head.weight.mul_(2)
    base, doubled = fit_temperature(OutputHead(model), s), fit_temperature(OutputHead(sharp), s)
    assert doubled.temperature == pytest.approx(2 * base.temperature, rel=1e-8)
    assert np.abs(doubled.nll_tempered - base.nll_tempered).max() < 1e-9
    assert doubled.nll.mean() > base.nll.mean()  # twice as sharp is worse at T = 1


def test_identical_models_fit_identical_temperatures(sample):
    model, s = sample
    a, b = fit_temperature(OutputHead(model), s), fit_temperature(OutputHead(model), s)
    assert a.beta == b.beta and np.array_equal(a.nll, b.nll) and np.array_equal(a.nll_tempered, b.nll_tempered)


def test_newton_stays_in_its_bracket_and_stops_where_no_finite_optimum_exists():
    # F(beta) = (beta - 3)^4: Newton's step from 1 undershoots, with curvature 0 at the optimum; bisection finishes
    beta, steps, converged = newton(lambda b: (4 * (b - 3) ** 3, 12 * (b - 3) ** 2 + 1e-300))
    assert beta == pytest.approx(3, abs=1e-3) and steps <= temperature.MAX_STEPS
    # the target always the argmax: F falls for ever (here F' = -e^-b): no convergence, beta stays finite
    beta, steps, converged = newton(lambda b: (-math.exp(-b), math.exp(-b)))
    assert not converged and beta <= temperature.BETA_MAX and steps == temperature.MAX_STEPS
    # with F' flat (no curvature) beta grows by GROWTH a step and stops at BETA_MAX
    beta, steps, converged = newton(lambda b: (-1.0, 0.0))
    assert not converged and beta <= temperature.BETA_MAX < beta * temperature.GROWTH and steps < 10
    # a model no better than uniform: F rises from beta = 0, where the optimum is, found once a step asks for it
    seen = []
    beta, steps, converged = newton(lambda b: seen.append(b) or (1.0 + b, 1.0))
    assert (beta, steps, converged) == (0.0, 2, True) and seen == [1.0, 0.0]
    # F' < 0 at 0: the bracket's lower end stays 0 and the minimiser inside is found
    beta, steps, converged = newton(lambda b: (b * b - 0.01, 2 * b))
    assert beta == pytest.approx(0.1, rel=1e-9) and converged
