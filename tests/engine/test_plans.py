"""Contract 3: packed rows under the block mask equal each document scored alone; the causal mask leaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import ARCHS, read_tokens, score_run


def alone_nll(model_dir, pile_records, k: int = 1) -> dict[tuple[int, int], float]:
    """Each document through the model's own forward on its own, per-token NLL computed here in float64."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = {}
    for doc_id, r in enumerate(pile_records):
        ids = [tok.bos_token_id] + tok(r["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for t in range(k, len(ids)):
            out[(doc_id, t)] = -logp[t - k, ids[t]].item()
    return out


# varlen refuses Gemma 2's attention soft-capping: test_varlen_refuses_what_it_cannot_apply
@pytest.mark.parametrize(("arch", "plan"), [(arch, plan) for arch in ARCHS for plan in ("dense", "docs", "varlen")
                                            if (arch, plan) != ("gemma2", "varlen")])
def test_packed_block_equals_documents_alone(tmp_path, tiny_models, pile_jsonl, pile_records, arch, plan):
    alone = alone_nll(tiny_models[arch], pile_records)
    lengths = np.bincount(np.array([d for d, _ in alone])) + 1  # targets 1..n-1 per document
    seq_lens = (37, 200) if arch != "llama" else (16, 37, 64, 200)
    for seq_len in seq_lens:
        for bs in (1, 3):
            out = tmp_path / f"{seq_len}-{bs}"
            score_run(tiny_models[arch], pile_jsonl, out, seq_len=seq_len, batch_size=bs, plan=plan)
            tokens = read_tokens(out)
            full = tokens[~tokens.truncated]
            ref = np.array([alone[(d, p)] for d, p in zip(full.doc_id, full.pos, strict=True)])
            assert np.abs(full.nll.values - ref).max() <= 1e-4, (seq_len, bs)
            # a document cut at a row's end loses context in the next row: counted, not hidden
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[tokens.doc_id.values]
            row_start = (starts + tokens.pos.values - 1) // seq_len * seq_len
            assert (tokens.truncated.values == (row_start > starts)).all()


@pytest.mark.parametrize(("plan", "positions"), [("dense", "restart"), ("dense", "continuous"),
                                                ("nomask", "continuous")])
def test_causal_mask_leaks_across_documents(tmp_path, llama_dir, pile_jsonl, pile_records, plan, positions):
    alone = alone_nll(llama_dir, pile_records)
    score_run(llama_dir, pile_jsonl, tmp_path / "causal", mask="causal", seq_len=200, positions=positions, plan=plan)
    tokens = read_tokens(tmp_path / "causal")
    ref = np.array([alone[(d, p)] for d, p in zip(tokens.doc_id, tokens.pos, strict=True)])
    diff = np.abs(tokens.nll.values - ref)
    first_in_row = tokens.groupby("doc_id").pos.transform("min") == tokens.pos
    later_docs = tokens.doc_id != tokens.doc_id.min()
    # every document after the first in a row sees its predecessors: its first target moves
    moved = diff[(first_in_row & later_docs & ~tokens.truncated).values]
    assert moved.size > 3 and (moved > 1e-3).mean() > 0.9


@pytest.mark.parametrize("k", [1, 2])
def test_scored_set_is_the_same_across_layouts_masks_and_plans(tmp_path, llama_dir, pile_jsonl, pile_records, k):
    tok = AutoTokenizer.from_pretrained(llama_dir)
    lengths = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) + 2 for r in pile_records]
    expected = {(d, t) for d, n in enumerate(lengths) for t in range(k, n)}
    combos = [("block", "dense"), ("block", "docs"), ("block", "varlen"), ("causal", "dense"), ("causal", "nomask")]
    for layout, (mask, plan) in [(lay, c) for lay in ("packed", "single") for c in combos]:
        out = tmp_path / f"{layout}-{mask}-{plan}"
        score_run(llama_dir, pile_jsonl, out, layout=layout, mask=mask, seq_len=40, label_offset=k, plan=plan)
        tokens = read_tokens(out)
        pairs = list(zip(tokens.doc_id, tokens.pos, strict=True))
        assert pairs == sorted(pairs) and set(pairs) == expected, (layout, mask, plan)
        targets = {(d, p): t for d, p, t in zip(tokens.doc_id, tokens.pos, tokens.target, strict=True)}
        assert targets[(0, k)] == tok(pile_records[0]["text"], add_special_tokens=False)["input_ids"][k - 1]


def test_mask_heads_and_continuous_positions(tmp_path, llama_dir, pile_jsonl):
    """(B,H,T,T) masks give the same numbers as (B,1,T,T). Under the block mask RoPE sees only relative offsets,
    so the seed's running positions give the same numbers as positions restarting per document."""
    base = read_tokens(score_run(llama_dir, pile_jsonl, tmp_path / "a", seq_len=64).out_dir)
    heads = read_tokens(score_run(llama_dir, pile_jsonl, tmp_path / "b", seq_len=64, mask_heads=True).out_dir)
    assert np.abs(base.nll.values - heads.nll.values).max() <= 1e-5
    cont = read_tokens(score_run(llama_dir, pile_jsonl, tmp_path / "c", seq_len=64, positions="continuous").out_dir)
    assert np.abs(base.nll.values - cont.nll.values).max() <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_every_plan_matches_dense(tmp_path, tiny_models, pile_jsonl, arch):
    """docs, varlen and nomask reproduce the dense reference token for token (fp32), for both masks and layouts."""
    fast_plans = [("block", "docs"), ("causal", "nomask")] + [("block", "varlen")] * (arch != "gemma2")
    for layout in ("packed", "single"):
        for mask, fast in fast_plans:
            name = f"{layout}-{mask}-{fast}"
            ref = read_tokens(score_run(tiny_models[arch], pile_jsonl, tmp_path / f"d-{name}", layout=layout,
                                        mask=mask, seq_len=48, batch_size=3, plan="dense").out_dir)
            got = read_tokens(score_run(tiny_models[arch], pile_jsonl, tmp_path / f"f-{name}", layout=layout,
                                        mask=mask, seq_len=48, batch_size=2, plan=fast, batch_tokens=100).out_dir)
            assert (ref[["doc_id", "pos", "target", "truncated"]].values ==
                    got[["doc_id", "pos", "target", "truncated"]].values).all()
            assert np.abs(ref.nll.values - got.nll.values).max() <= 1e-4, (layout, mask)


def test_varlen_refuses_what_it_cannot_apply(tmp_path, tiny_models, llama_dir, pile_jsonl):
    from lossgap.errors import UsageError

    with pytest.raises(UsageError, match="soft-caps attention scores"):
        score_run(tiny_models["gemma2"], pile_jsonl, tmp_path / "g", plan="varlen")
    with pytest.raises(UsageError, match="needs --mask block or --layout single"):
        score_run(llama_dir, pile_jsonl, tmp_path / "c", mask="causal", plan="varlen")
    from lossgap.engine.plans import make_plan
    from tests.helpers import tiny_config

    cfg = tiny_config("qwen2", 384, 256)
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 8, 1
    cfg.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(UsageError, match="sliding-window layers"):
        make_plan("varlen", AutoModelForCausalLM.from_config(cfg), "block", "restart", 1, 1)


def test_a_plan_that_swaps_attention_leaves_the_model_on_its_own(llama_dir):
    """varlen switches the model to its attention only inside `plan.attention()` (each batch, or a whole loop of
    them): afterwards, and for a dense plan on the same model (as compare and the benchmarks do), the model runs its
    own attention and gives the dense numbers."""
    from lossgap.data.encode import TokenizedDocument
    from lossgap.data.layout import packed_rows
    from lossgap.engine.forward import score_batch
    from lossgap.engine.head import OutputHead
    from lossgap.engine.plans import make_plan

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    docs = [TokenizedDocument(i, "d", f"d{i}", rng.integers(0, 200, n), 0) for i, n in enumerate((9, 14, 6))]
    head = OutputHead(model)

    def run(name):
        plan = make_plan(name, model, "block", "restart", 1, 2)
        return np.concatenate([score_batch(plan, head, b) for b in plan.batches(list(packed_rows(docs, 32, 1)))])

    before = run("dense")
    varlen = run("varlen")
    assert model.config._attn_implementation == "sdpa"
    plan = make_plan("varlen", model, "block", "restart", 1, 2)
    with plan.attention():
        assert model.config._attn_implementation == "lossgap_varlen"
        with plan.attention():  # entered again by each batch inside a loop: nothing changes
            assert model.config._attn_implementation == "lossgap_varlen"
        assert model.config._attn_implementation == "lossgap_varlen"
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), plan.attention():
        raise RuntimeError("a failing batch")
    assert model.config._attn_implementation == "sdpa"  # restored on the way out of a failure too
    after = run("dense")
    assert np.abs(after - before).max() == 0 and np.abs(varlen - before).max() <= 1e-4


@pytest.mark.parametrize("mode", ["block", "causal"])
@pytest.mark.parametrize("window", [None, 3])
def test_flex_mask_mod_allows_what_the_dense_mask_allows(mode, window):
    """The flex plan's mask_mod, evaluated on every (row, query, key), equals the dense reference mask, sliding
    window and padding included (the flex kernel itself runs on CUDA only: benchmarks/gpu_check.py)."""
    from lossgap.engine.masks import allowed_pairs
    from lossgap.engine.plans import flex_mask_mod

    seg = torch.tensor([[0, 0, 0, 0, 1, 1, 1, -1, -1], [2, 2, 3, 3, 3, 3, 3, 3, 3]])
    rows, length = seg.shape
    b = torch.arange(rows)[:, None, None]
    q = torch.arange(length)[None, :, None]
    kv = torch.arange(length)[None, None, :]
    got = flex_mask_mod(seg, mode, window)(b, None, q, kv)
    assert torch.equal(got, allowed_pairs(seg, mode, window))


@pytest.mark.parametrize("window", [None, 100])
def test_flex_block_mask_has_the_blocks_the_dense_mask_needs(window):
    """The compiled BlockMask keeps exactly the 128 x 128 blocks holding an allowed (query, key) pair."""
    from lossgap.engine.masks import allowed_pairs
    from lossgap.engine.plans import document_block_mask

    lengths = [300, 40, 500, 180]  # 1,020 tokens of documents, then padding to 1,024
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)] + [torch.full((4,), -1)])[None]
    got = document_block_mask(seg, "block", window).to_dense()[0, 0].bool()
    allowed = allowed_pairs(seg, "block", window)[0]
    blocks = allowed.reshape(8, 128, 8, 128).any(dim=3).any(dim=1)
    assert torch.equal(got, blocks) and 0 < blocks.sum() < 36  # sparser than the causal triangle


def test_auto_takes_varlen_on_the_cpu_and_docs_where_varlen_refuses_the_model(tmp_path, tiny_models, pile_jsonl):
    """auto: documents apart on a CPU run varlen (faster or at par on every CPU measured), on CUDA docs; a model with
    soft-capped attention (Gemma 2), which varlen refuses, gets docs instead of an error."""
    from lossgap.engine.plans import choose_plan
    from lossgap.errors import UsageError

    assert choose_plan("auto", "block", "restart", torch.device("cpu")) == "varlen"
    assert choose_plan("auto", "causal", "continuous", torch.device("cpu"), "single") == "varlen"
    assert choose_plan("auto", "block", "restart", torch.device("cuda")) == "docs"
    assert choose_plan("auto", "causal", "continuous", torch.device("cpu")) == "nomask"
    assert score_run(tiny_models["llama"], pile_jsonl, tmp_path / "l").summary["plan"] == "varlen"
    assert score_run(tiny_models["gemma2"], pile_jsonl, tmp_path / "g").summary["plan"] == "docs"
    with pytest.raises(UsageError, match="soft-caps"):
        score_run(tiny_models["gemma2"], pile_jsonl, tmp_path / "v", plan="varlen")
