"""Streamed distribution statistics (contract 8) against float64 full softmax, on tiny Llama, Qwen2 and Gemma 2 models
and on bare output projections; the NLL-only path unchanged bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lossgap.engine.head import CPU_TILE_BYTES, STATS_BYTES_PER_LOGIT, OutputHead
from lossgap.engine.headstats import METRICS, pair_tiles, paired_token_stats, stream_stats
from lossgap.formats.columns import MODEL_STATS, PAIR_COLUMNS, PAIR_CONTEXT, PAIR_KEYS
from tests.helpers import ARCHS

TIE = 1e-5  # float64 logits closer than this may swap order in fp32: argmax and rank may differ there only
# (tokens, vocabulary entries); None: all, -1: all but one; 128: the blocked argmax search, then a ragged last tile
TILINGS = ((33, 7), (7, 33), (16, 128), (1000, None), (5, -1))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tiles make hundreds of small ops per call: with two threads on a busy 2-core machine each op waits for
    the other thread (200 s for this file against 5 s on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(tiny_models, arch: str, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=dtype).eval()


def _hidden(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]


def _ids(vocab: int, n: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n + 1), generator=torch.Generator().manual_seed(seed))


def _tiled(head: OutputHead, chunk: int, tile: int | None) -> OutputHead:
    head.chunk_tokens = head.stats_tokens = chunk  # the same chunks for the NLL path and the statistics
    head.vocab_tile = head.vocab if tile is None else head.vocab - 1 if tile == -1 else tile
    return head


def _exact_logits(head: OutputHead, hidden: torch.Tensor) -> torch.Tensor:
    """float64 logits over the whole vocabulary, the model's logit transform applied in float64."""
    with torch.no_grad():
        return head.tile_logits(hidden, 0, head.vocab, exact=True)


def _reference(z: torch.Tensor, targets: torch.Tensor, special: list[int] = ()) -> dict:
    """Every statistic from float64 log_softmax over the whole vocabulary."""
    logp = z.log_softmax(1)
    target_logit = z.gather(1, targets[:, None])
    return {"nll": -logp.gather(1, targets[:, None])[:, 0], "entropy": -(logp.exp() * logp).sum(1),
            "p_target": logp.gather(1, targets[:, None])[:, 0].exp(), "argmax": z.argmax(1),
            "p_argmax": logp.amax(1).exp(), "rank": (z > target_logit).sum(1),
            "p_special": logp[:, list(special)].exp().sum(1)}


def _special_ids(vocab: int) -> list[int]:
    """Entries in the first and last tiles and between (control tokens sit at either end of real vocabularies)."""
    return [0, 1, 2, vocab // 2, vocab - 2, vocab - 1]


def _assert_matches(got: dict, z: torch.Tensor, targets: torch.Tensor, tol: float = 1e-5, special=()) -> None:
    ref = _reference(z, targets, special)
    for name in ("nll", "entropy", "p_target", "p_argmax", "p_special"):
        if name in got:
            assert got[name].dtype in (torch.float32, torch.float64)
            assert (got[name].double() - ref[name]).abs().max().item() <= tol, name
    if "argmax" in got:
        assert got["argmax"].dtype == torch.int64
        near = (z.gather(1, got["argmax"][:, None]) - z.gather(1, ref["argmax"][:, None])).abs()[:, 0] <= TIE
        assert ((got["argmax"] == ref["argmax"]) | near).all()
    if "rank" in got:
        assert got["rank"].dtype == torch.int64
        ties = ((z - z.gather(1, targets[:, None])).abs() <= TIE).sum(1) - 1  # entries other than the target
        assert ((got["rank"] - ref["rank"]).abs() <= ties).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_stats_match_float64_full_softmax(tiny_models, arch):
    model = _model(tiny_models, arch)
    ids = _ids(model.config.vocab_size)
    hidden, targets = _hidden(model, ids), ids[0, 1:]
    z = _exact_logits(OutputHead(model), hidden)
    if arch == "gemma2":  # soft-capped: every logit within the cap
        assert OutputHead(model).softcap == 5.0 and z.abs().max().item() < 5.0
    with torch.no_grad():
        special = _special_ids(model.config.vocab_size)
        for chunk, tile in TILINGS:
            head = _tiled(OutputHead(model), chunk, tile)
            head.set_special_ids(special)
            got = head.token_stats(hidden, targets, METRICS)
            assert list(got) == list(METRICS)
            assert {k: v.dtype for k, v in got.items()} == {k: torch.int64 if k in ("argmax", "rank") else torch.float32
                                                            for k in METRICS}
            _assert_matches(got, z, targets, special=special)
            assert got["p_special"].min().item() > 0
            assert torch.equal(got["nll"], head.token_stats(hidden, targets)["nll"])  # the same figure either way
            if tile == 7:
                _assert_matches(head.token_stats(hidden, targets, METRICS, exact=True), z, targets, tol=1e-10,
                                special=special)
            rank_only = head.token_stats(hidden, targets, ("rank",))
            assert list(rank_only) == ["rank"] and torch.equal(rank_only["rank"], got["rank"])


def _reference_nll(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """head._tiled_nll as it was before the streamed statistics were added, kept verbatim as the bit-for-bit pin."""
    n = targets.shape[0]
    run_max = torch.full((n,), float("-inf"))
    sum_exp, target_logit = torch.zeros(n), torch.zeros(n)
    lowest = torch.finfo(torch.float32).min
    for lo in range(0, head.vocab, head.vocab_tile):
        hi = min(lo + head.vocab_tile, head.vocab)
        for start in range(0, n, head.chunk_tokens):
            rows = slice(start, start + head.chunk_tokens)
            logits = head.tile_logits(hidden[rows], lo, hi).to(torch.float32)
            local = targets[rows] - lo
            inside = (local >= 0) & (local < hi - lo)
            picked = logits.gather(1, local.clamp(0, hi - lo - 1)[:, None])[:, 0]
            target_logit[rows] = torch.where(inside, picked, target_logit[rows])
            old_max = run_max[rows]
            new_max = torch.maximum(old_max, logits.amax(1)).clamp_min(lowest)
            tile_sum = logits.sub_(new_max[:, None]).exp_().sum(1)
            sum_exp[rows] = sum_exp[rows] * torch.exp(old_max - new_max) + tile_sum
            run_max[rows] = new_max
    return run_max + torch.log(sum_exp) - target_logit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_nll_only_path_is_unchanged_bit_for_bit(tiny_models, dtype):
    model = _model(tiny_models, "gemma2", dtype)
    ids = _ids(model.config.vocab_size)
    hidden, targets = _hidden(model, ids), ids[0, 1:]
    with torch.no_grad():
        for chunk, tile in TILINGS:
            head = _tiled(OutputHead(model), chunk, tile)
            got = head.token_stats(hidden, targets)
            assert list(got) == ["nll"] and got["nll"].dtype == torch.float32
            assert torch.equal(got["nll"], _reference_nll(head, hidden, targets))
            assert torch.equal(got["nll"], head._tiled_nll(hidden, targets, exact=False))
            streamed = stream_stats(head, hidden, targets, ("nll", "entropy"))["nll"]
            assert torch.equal(streamed, got["nll"])
            p = head.token_stats(hidden, targets, ("p_target",))["p_target"]
            assert torch.equal(p, torch.exp(-got["nll"]))


def test_the_statistics_chunk_holds_their_scratch_in_the_tile_budget(llama_dir):
    head = OutputHead(AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32), chunk_mb=1024)
    assert head.stats_tokens == max(1, CPU_TILE_BYTES // (head.vocab_tile * STATS_BYTES_PER_LOGIT))
    assert pair_tiles(head, head) == (head.vocab_tile, head.stats_tokens)


def test_unknown_metrics_are_refused(llama_dir):
    head = OutputHead(AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32))
    with pytest.raises(ValueError, match="computes no \\['perplexity'\\]"):
        head.token_stats(torch.zeros(2, 64), torch.zeros(2, dtype=torch.int64), ("nll", "perplexity"))


def _kl(zb: torch.Tensor, zo: torch.Tensor) -> torch.Tensor:
    logb, logo = zb.log_softmax(1), zo.log_softmax(1)
    return (logb.exp() * (logb - logo)).sum(1)


def _of(got: dict, role: str) -> dict:
    """One model's statistics of a paired result (roles <metric>_b, <metric>_o) under the metric names."""
    return {name.removesuffix(f"_{role}"): values for name, values in got.items() if name.endswith(f"_{role}")
            and name.removesuffix(f"_{role}") in METRICS}


def _assert_pair(got: dict, zb, zo, targets, tol: float = 1e-5, special=()) -> None:
    _assert_matches(_of(got, "b"), zb, targets, tol, special)
    _assert_matches(_of(got, "o"), zo, targets, tol, special)
    for key, ref in (("kl_bo", _kl(zb, zo)), ("kl_ob", _kl(zo, zb))):
        assert got[key].dtype in (torch.float32, torch.float64)
        assert got[key].min().item() >= -1e-6
        # fp32 holds a KL of 40 nats to 4e-6: the tolerance is relative above 1 nat
        assert ((got[key].double() - ref).abs() <= tol * ref.abs().clamp_min(1)).all(), key
    assert got["top1_agree"].dtype == torch.bool
    ref_agree = zb.argmax(1) == zo.argmax(1)
    near = _near_tie(zb) | _near_tie(zo)
    assert ((got["top1_agree"] == ref_agree) | near).all()
    p_b_at_o = zb.softmax(1).gather(1, zo.argmax(1)[:, None])[:, 0]  # float64, full vocabulary
    assert (((got["p_b_argmax_o"].double() - p_b_at_o).abs() <= tol) | _near_tie(zo)).all()
    at = zb.gather(1, zo.argmax(1)[:, None])
    shift = (zb > at).sum(1).clamp_max(3)  # b's entries above o's top-1, counted up to 3
    near_b = ((zb - at).abs() <= TIE).sum(1) > 1  # another of b's entries ties o's top-1
    assert got["rank_b_argmax_o"].dtype == torch.int8
    assert ((got["rank_b_argmax_o"].long() == shift) | _near_tie(zo) | near_b).all()
    assert (got["rank_b_argmax_o"] == 0).eq(got["top1_agree"]).logical_or(_near_tie(zo) | _near_tie(zb)).all()


def test_the_heads_compute_exactly_the_declared_columns(tiny_models):
    """formats/columns.py declares what a model's stream and the paired head give; the head gives exactly that."""
    model = _model(tiny_models, "llama")
    ids = _ids(model.config.vocab_size, seed=4)
    hidden, targets = _hidden(model, ids), ids[0, 1:]
    head = OutputHead(model)
    with torch.no_grad():
        assert set(stream_stats(head, hidden, targets)) == {c.name for c in MODEL_STATS}
        got = paired_token_stats(head, hidden, head, hidden, targets)
    assert set(got) == {c.role for c in PAIR_COLUMNS if c.role not in (*PAIR_KEYS, PAIR_CONTEXT.role)}  # the layout's
    assert all(values.shape == targets.shape for values in got.values())


def _near_tie(z: torch.Tensor) -> torch.Tensor:
    top2 = z.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) <= TIE


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_against_itself_has_no_divergence(tiny_models, arch):
    model = _model(tiny_models, arch)
    ids = _ids(model.config.vocab_size, seed=2)
    hidden, targets = _hidden(model, ids), ids[0, 1:]
    with torch.no_grad():
        for chunk, tile in TILINGS:
            head = _tiled(OutputHead(model), chunk, tile)
            got = paired_token_stats(head, hidden, head, hidden, targets)
            assert got["kl_bo"].abs().max().item() <= 1e-6 and got["kl_ob"].abs().max().item() <= 1e-6
            assert got["top1_agree"].all()
            single = head.token_stats(hidden, targets, METRICS)
            for name in METRICS:
                assert torch.allclose(got[f"{name}_b"].double(), single[name].double(), rtol=0, atol=1e-5), name


@pytest.mark.parametrize(("arch_b", "arch_o"), [("llama", "qwen2"), ("qwen2", "gemma2")])
def test_two_models_match_float64(tiny_models, arch_b, arch_o):
    model_b, model_o = _model(tiny_models, arch_b), _model(tiny_models, arch_o)
    ids = _ids(model_b.config.vocab_size, seed=3)
    hidden_b, hidden_o, targets = _hidden(model_b, ids), _hidden(model_o, ids), ids[0, 1:]
    zb, zo = _exact_logits(OutputHead(model_b), hidden_b), _exact_logits(OutputHead(model_o), hidden_o)
    assert _kl(zb, zo).mean().item() > 0.01  # the models differ
    with torch.no_grad():
        for chunk, tile in TILINGS:
            head_b, head_o = _tiled(OutputHead(model_b), chunk, tile), _tiled(OutputHead(model_o), chunk, tile)
            special = _special_ids(model_b.config.vocab_size)
            for head in (head_b, head_o):
                head.set_special_ids(special)
            got = paired_token_stats(head_b, hidden_b, head_o, hidden_o, targets)
            _assert_pair(got, zb, zo, targets, special=special)
            if tile == 7:
                _assert_pair(paired_token_stats(head_b, hidden_b, head_o, hidden_o, targets, exact=True), zb, zo,
                             targets, tol=1e-10, special=special)
                subset = paired_token_stats(head_b, hidden_b, head_o, hidden_o, targets, ("nll",))
                assert list(_of(subset, "b")) == ["nll"] and torch.equal(subset["kl_bo"], got["kl_bo"])


# Bare output projections: bias, scaling transforms, bf16 rounding, projections applied whole, mismatched vocabularies.

class _Bare(torch.nn.Module):
    """A model that is only an output projection, with the config attributes OutputHead reads."""

    def __init__(self, proj, model_type: str = "custom", **config):
        super().__init__()
        self.proj = proj
        self.config = type("Config", (), {"model_type": model_type, **config})()

    def get_output_embeddings(self):
        return self.proj


def _proj(vocab: int = 301, dim: int = 16, seed: int = 3, bias: bool = True, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    proj = torch.nn.Linear(dim, vocab, bias=bias)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(vocab, dim, generator=gen) * 2)  # logits up to ~40: the running max matters
        if bias:
            proj.bias.copy_(torch.randn(vocab, generator=gen) * 3)
    return proj.to(dtype)


def _inputs(vocab: int = 301, dim: int = 16, n: int = 50, dtype=torch.float32):
    gen = torch.Generator().manual_seed(4)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[:3] = torch.tensor([0, vocab - 1, 7])  # first entry, last entry, the start of a tile
    return torch.randn(n, dim, generator=gen).to(dtype), targets


@pytest.mark.parametrize(("model_type", "config"), [("custom", {}), ("granite", {"logits_scaling": 4.0}),
                                                    ("cohere", {"logit_scale": 0.25})])
def test_bias_and_scaled_logits_match_float64(model_type, config):
    hidden, targets = _inputs()
    proj_b, proj_o = _proj(seed=3), _proj(seed=5)
    for chunk, tile in TILINGS:
        head_b = _tiled(OutputHead(_Bare(proj_b, model_type, **config)), chunk, tile)
        head_o = _tiled(OutputHead(_Bare(proj_o, model_type, **config)), chunk, tile)
        zb, zo = _exact_logits(head_b, hidden), _exact_logits(head_o, hidden)
        with torch.no_grad():
            _assert_matches(head_b.token_stats(hidden, targets, METRICS), zb, targets)
            _assert_pair(paired_token_stats(head_b, hidden, head_o, hidden, targets), zb, zo, targets)


def test_the_baselines_rank_of_the_others_top1_is_every_shift_urial_names():
    """A tuned copy of a projection (the baseline's weights plus noise): the other's top-1 is the baseline's own on
    some tokens, its 2nd or 3rd on others, further down on the rest; counted as float64 counts it, on every tiling."""
    hidden, targets = _inputs(n=400)
    proj_b = _proj(seed=3)
    proj_o = _proj(seed=3)
    with torch.no_grad():
        proj_o.weight.add_(0.6 * torch.randn(proj_o.weight.shape, generator=torch.Generator().manual_seed(9)))
    for chunk, tile in TILINGS:
        head_b, head_o = _tiled(OutputHead(_Bare(proj_b)), chunk, tile), _tiled(OutputHead(_Bare(proj_o)), chunk, tile)
        zb, zo = _exact_logits(head_b, hidden), _exact_logits(head_o, hidden)
        with torch.no_grad():
            got = paired_token_stats(head_b, hidden, head_o, hidden, targets)
        _assert_pair(got, zb, zo, targets)
        shift = (zb > zb.gather(1, zo.argmax(1)[:, None])).sum(1).clamp_max(3)
        assert torch.equal(got["rank_b_argmax_o"].long(), shift)
        assert set(shift.tolist()) == {0, 1, 2, 3}


def test_bf16_ranks_count_the_logits_the_model_rounds():
    """bf16 logits tie often; the target's logit from the gathered rows is rounded as the tile rounds it, so the rank
    counts exactly the entries whose bf16 logit is above the target's."""
    hidden, targets = _inputs(dtype=torch.bfloat16)
    head = _tiled(OutputHead(_Bare(_proj(dtype=torch.bfloat16))), 7, 33)
    with torch.no_grad():
        z = head.logits(hidden).double()  # the model's own bf16 logits
        got = head.token_stats(hidden, targets, METRICS)
    ref = _reference(z, targets)
    assert torch.equal(got["rank"], ref["rank"]) and torch.equal(got["argmax"], ref["argmax"])
    assert (got["entropy"].double() - ref["entropy"]).abs().max().item() <= 1e-5


def test_a_projection_applied_whole_pairs_with_a_tiled_one():
    hidden, targets = _inputs()
    hooked = _proj(seed=5)
    hooked.register_forward_hook(lambda module, args, out: out * 2)  # as tensor parallelism gathers in a hook
    head_b, head_o = _tiled(OutputHead(_Bare(_proj(seed=3))), 7, 33), OutputHead(_Bare(hooked))
    assert not head_o.plain and pair_tiles(head_b, head_o)[0] == head_b.vocab
    with torch.no_grad():
        zb, zo = _exact_logits(head_b, hidden), 2 * _exact_logits(_tiled(OutputHead(_Bare(_proj(seed=5))), 7, 33),
                                                                  hidden)
        _assert_matches(head_o.token_stats(hidden, targets, METRICS), zo, targets)
        _assert_pair(paired_token_stats(head_b, hidden, head_o, hidden, targets), zb, zo, targets)


def test_ties_go_to_the_lowest_id_and_never_count_for_rank():
    """Integer weights and hidden states make logits exact, so entries 5, 6 (one tile) and 130 (another) tie for the
    maximum: the argmax is 5 whatever the tiling, and a tied target has rank 0."""
    gen = torch.Generator().manual_seed(6)
    proj = torch.nn.Linear(8, 320, bias=False)
    hidden = torch.randint(1, 4, (12, 8), generator=gen).float()
    with torch.no_grad():
        proj.weight.copy_(torch.randint(-3, 3, (320, 8), generator=gen).float())
        proj.weight[[5, 6, 130]] = 4.0  # above every other row for positive hidden states
    targets = torch.tensor([5, 6, 130, 0] * 3)
    for chunk, tile in ((5, 7), (4, 128), (12, None)):
        head = _tiled(OutputHead(_Bare(proj)), chunk, tile)
        with torch.no_grad():
            got = head.token_stats(hidden, targets, METRICS)
            pair = paired_token_stats(head, hidden, head, hidden, targets)
        assert (got["argmax"] == 5).all() and (pair["argmax_o"] == 5).all() and pair["top1_agree"].all()
        assert got["rank"].tolist()[:3] == [0, 0, 0] and (got["rank"][3::4] >= 3).all()
        assert torch.allclose(got["p_argmax"], got["p_target"][0].expand(12))


def test_heads_of_different_vocabularies_are_refused():
    hidden, targets = _inputs()
    head_b, head_o = OutputHead(_Bare(_proj(vocab=301))), OutputHead(_Bare(_proj(vocab=320)))
    with pytest.raises(ValueError, match="differ in vocabulary size \\(301 vs 320\\)"):
        paired_token_stats(head_b, hidden, head_o, hidden, targets)


def test_the_softmax_reference_is_float64_cross_entropy():
    """The test's own reference agrees with torch's cross-entropy, so a shared mistake cannot hide."""
    hidden, targets = _inputs()
    z = _exact_logits(OutputHead(_Bare(_proj())), hidden)
    assert torch.allclose(_reference(z, targets)["nll"], F.cross_entropy(z, targets, reduction="none"))
