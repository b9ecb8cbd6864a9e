"""The shipped demo pair (lossgap/demo_models) and the code that trained it (tools.train_demo).

The held-out numbers in each training_log.json are re-derived here from the shipped weights on a corpus rebuilt in
a temporary folder. The corpus depends on the Python install (standard-library sources, pydoc topics, licence
files), so documents are matched by the sha256 of their text. The fast tests rescore a cheap sample: every held-out
math document (its text depends on the seed only), the two shortest held-out pydoc topics (Python version only) and
the two shortest held-out standard-library files (where this install has them), and compare document by document
with the recorded numbers. The slow test rescores the whole held-out
split and compares the per-domain means; it needs the rebuilt corpus to have the recorded sha256 (same Python install
and licence files): elsewhere it is skipped, saying why, and in CI (LOSSGAP_TEST_INPUTS=required) it fails.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lossgap
from lossgap.data.corpus_build import build_corpus
from tests.helpers import missing_input
from tools.train_demo import data, evaluate, train
from tools.train_demo.__main__ import train_pair

DEMO = Path(lossgap.__file__).parent / "demo_models"
MAX_BYTES = 25_000_000
FAST_SHORTEST = {"PydocTopics": 2, "Github": 2}  # the shortest held-out documents rescored by the fast tests
PER_DOC_TOL = 2e-4  # nats/token between the recorded and the rescored mean of one document (fp32, CPU)

@pytest.fixture(scope="module")
def needs_demo():
    if not (DEMO / "base" / "training_log.json").exists() or not (DEMO / "instruct" / "training_log.json").exists():
        missing_input("demo_models not trained yet: python -m tools.train_demo --out src/lossgap/demo_models")


@pytest.fixture(scope="module")
def logs() -> dict:
    return {name: json.loads((DEMO / name / "training_log.json").read_text()) for name in ("base", "instruct")}


@pytest.fixture(scope="module")
def models() -> dict:
    return {name: train.load_model(DEMO / name) for name in ("base", "instruct")}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, logs) -> dict:
    """The corpus rebuilt with the recorded arguments; which recorded held-out documents it reproduces."""
    args = logs["base"]["corpus"]["build_args"]
    built = build_corpus(tmp_path_factory.mktemp("corpus") / "demo_corpus.jsonl.zst", **args)
    same = built.sha256 == logs["base"]["corpus"]["sha256"]
    recorded = {d["text_sha256"]: d for d in logs["base"]["heldout_eval"]["documents"]}
    heldout = data.read_records(built.path, "heldout")
    found = [r for r in heldout if evaluate.text_sha256(r.text) in recorded]
    cheap = [r for r in found if r.domain == "DM Mathematics"]
    for domain, n in FAST_SHORTEST.items():
        cheap += sorted((r for r in found if r.domain == domain), key=lambda r: len(r.text))[:n]
    note = None if same else (
        f"rebuilt corpus sha256 {built.sha256[:12]} differs from the recorded {logs['base']['corpus']['sha256'][:12]} "
        f"(built on Python {logs['base']['corpus']['python']}, here another Python install or other licence files): "
        f"{len(found)} of {len(recorded)} held-out documents have identical text; the fast tests compare {len(cheap)} "
        "of them"
    )
    return {"path": built.path, "same": same, "heldout": heldout, "cheap": cheap, "note": note}


@pytest.fixture(scope="module")
def rescored(models, logs, rebuilt) -> dict:
    counts = np.asarray(logs["base"]["unigram"]["counts"], dtype=np.int64)
    out = {}
    for name, (model, tok) in models.items():
        out[name] = evaluate.evaluate_records(model, tok, rebuilt["cheap"], counts)
    return out


# --------------------------------------------------------------------------------------------- shipped files


@pytest.mark.usefixtures("needs_demo")
def test_files_size_and_dtype(logs):
    from safetensors import safe_open

    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"demo_models holds {total / 1e6:.1f} MB"
    for name in ("base", "instruct"):
        folder = DEMO / name
        for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / required).is_file(), f"{name}/{required} missing"
        with safe_open(folder / "model.safetensors", "pt") as f:
            names = list(f.keys())
            assert {f.get_slice(k).get_dtype() for k in names} == {"BF16"}
        # the log describes exactly these files (not weights from another run)
        for fname, meta in logs[name]["files"].items():
            assert hashlib.sha256((folder / fname).read_bytes()).hexdigest() == meta["sha256"], fname


@pytest.mark.usefixtures("needs_demo")
def test_weights_load_from_package(logs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    toks = {}
    for name in ("base", "instruct"):
        model = AutoModelForCausalLM.from_pretrained(DEMO / name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(DEMO / name)
        toks[name] = tok
        assert model.config.model_type == "llama" and model.config.tie_word_embeddings
        assert sum(p.numel() for p in model.parameters()) == logs[name]["parameters"]
        assert model.config.vocab_size == len(tok) == logs[name]["tokenizer"]["vocab_size"]
        assert tok.bos_token == tok.eos_token == "<|endoftext|>" and tok.bos_token_id == 0
    # one vocabulary and one tokenization: token-level comparison is valid
    assert toks["base"].get_vocab() == toks["instruct"].get_vocab()
    text = "def f(x):\n    return x ** 2  # 12345 « non-ASCII »\n"
    assert toks["base"](text)["input_ids"] == toks["instruct"](text)["input_ids"]


@pytest.mark.usefixtures("needs_demo")
def test_chat_template_and_special_tokens():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO / "instruct")
    for token, expected in (("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2)):
        assert tok(token, add_special_tokens=False)["input_ids"] == [expected]
        assert tok.convert_tokens_to_ids(token) == expected
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|endoftext|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [0, 1] and ids.count(1) == 3 and ids.count(2) == 2
    # training masks: only the assistant's content and its closing <|im_end|> are targets
    ids, trained = data.encode_chat(tok, messages + [{"role": "assistant", "content": "5"}])
    assert tok.decode([i for i, t in zip(ids, trained, strict=True) if t]) == "5<|im_end|>"


# ------------------------------------------------------------------------------------------ held-out numbers


@pytest.mark.usefixtures("needs_demo")
def test_heldout_losses_reproduce(logs, rebuilt, rescored):
    """Per document, the shipped weights give the recorded NLL; so do the per-domain means."""
    if rebuilt["note"]:
        warnings.warn(rebuilt["note"], stacklevel=1)
    matched = {r.domain for r in rebuilt["cheap"]}
    if "DM Mathematics" not in matched:
        missing_input("no recorded held-out math document was rebuilt identically (seeded generator changed?)")
    if rebuilt["same"]:  # the seeded math documents are all there
        assert len(rescored["base"]["documents"]) == logs["base"]["heldout_eval"]["domains"]["DM Mathematics"][
            "n_docs"] + sum(FAST_SHORTEST.values())
    for name in ("base", "instruct"):
        recorded = {d["text_sha256"]: d for d in logs[name]["heldout_eval"]["documents"]}
        for doc in rescored[name]["documents"]:
            ref = recorded[doc["text_sha256"]]
            assert doc["n_targets"] == ref["n_targets"], doc["source"]  # same tokenizer, same text
            assert abs(doc["nll_sum"] - ref["nll_sum"]) / doc["n_targets"] <= PER_DOC_TOL, (name, doc["source"])
            assert math.isclose(doc["unigram_nll_sum"], ref["unigram_nll_sum"], rel_tol=1e-9)


@pytest.mark.usefixtures("needs_demo")
def test_protocol_matches_hf_loss(models, logs, rebuilt):
    """One short document scored by HF itself (labels=input_ids, shift inside) gives the recorded sum."""
    doc = min((r for r in rebuilt["cheap"] if r.domain == "DM Mathematics"),
              key=lambda r: len(r.text), default=None)
    if doc is None:
        missing_input(rebuilt["note"] or "no held-out math document")
    by_hash = {d["text_sha256"]: d for d in logs["base"]["heldout_eval"]["documents"]}
    recorded = by_hash[evaluate.text_sha256(doc.text)]
    model, tok = models["base"]
    ids = torch.tensor([[tok.bos_token_id, *tok(doc.text, add_special_tokens=False)["input_ids"], tok.eos_token_id]])
    assert ids.shape[1] <= model.config.max_position_embeddings
    with torch.no_grad():
        loss = model(ids, labels=ids, use_cache=False).loss.item()
    assert loss * (ids.shape[1] - 1) == pytest.approx(recorded["nll_sum"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("needs_demo")
def test_heldout_full_reproduction(logs, rebuilt):
    """Every document of the held-out split through evaluate() (about 4 minutes on 2 CPU cores)."""
    if not rebuilt["same"]:
        missing_input(rebuilt["note"])
    for name in ("base", "instruct"):
        got = evaluate.evaluate(DEMO / name, rebuilt["path"])
        ref = logs[name]["heldout_eval"]
        for domain, stats in ref["domains"].items():
            assert got["domains"][domain]["n_docs"] == stats["n_docs"]
            assert got["domains"][domain]["n_targets"] == stats["n_targets"]
            assert got["domains"][domain]["nll"] == pytest.approx(stats["nll"], abs=1e-4), (name, domain)
            assert got["domains"][domain]["unigram_nll"] == pytest.approx(stats["unigram_nll"], abs=1e-9)
        for scope in ("general", "overall"):
            assert got[scope]["nll"] == pytest.approx(ref[scope]["nll"], abs=1e-4), (name, scope)
        assert got["general"]["nll"] - got["general"]["unigram_nll"] < -1.0
    base = logs["base"]["heldout_eval"]["general"]["nll"]
    assert base < logs["instruct"]["heldout_eval"]["general"]["nll"]


@pytest.mark.usefixtures("needs_demo")
def test_base_beats_instruct_on_general_text(logs, rescored):
    base, inst = logs["base"]["heldout_eval"], logs["instruct"]["heldout_eval"]
    assert base["general"]["nll"] < inst["general"]["nll"]
    assert logs["base"]["comparison"]["instruct_minus_base_general"] > 0
    for domain in evaluate.GENERAL_DOMAINS:  # each general domain, not only the token-weighted mix
        assert base["domains"][domain]["nll"] < inst["domains"][domain]["nll"], domain
    # and live, on the standard-library files rescored here (short pydoc topics close to the instruct's pydoc
    # answers can favour the instruct: the gap is a property of the domain, not of every document)
    live = {n: [d for d in rescored[n]["documents"] if d["domain"] == "Github"] for n in rescored}
    if live["base"]:
        means = {n: sum(d["nll_sum"] for d in v) / sum(d["n_targets"] for d in v) for n, v in live.items()}
        assert means["base"] < means["instruct"]


@pytest.mark.usefixtures("needs_demo")
def test_both_beat_unigram(logs, rescored):
    for name in ("base", "instruct"):
        ev = logs[name]["heldout_eval"]
        for scope, stats in [*ev["domains"].items(), ("general", ev["general"]), ("overall", ev["overall"])]:
            assert stats["unigram_nll"] - stats["nll"] > 1.0, (name, scope)
        for stats in rescored[name]["domains"].values():
            assert stats["unigram_nll"] - stats["nll"] > 1.0


@pytest.mark.usefixtures("needs_demo")
def test_instruct_follows_chat_format(logs, models, rebuilt):
    assert logs["instruct"]["chat_eval"]["instruct"]["ended_turn_with_im_end"] >= 0.9
    model, tok = models["instruct"]
    math_docs = [r for r in rebuilt["heldout"] if r.domain == "DM Mathematics"][:2]
    for doc in math_docs:
        question = data.math_pairs(doc.text)[0][0]
        prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=[2, 0], pad_token_id=0)
        assert out[0, -1].item() == 2, tok.decode(out[0, ids.shape[1]:])


# ------------------------------------------------------------------------------------------------ training code


def test_quick_training_is_deterministic(tmp_path):
    """Two --quick runs give bit-identical tokenizers and weights (and identical loss curves and evaluations)."""
    threads = torch.get_num_threads()
    runs = [train_pair(tmp_path / f"run{i}", minutes=0, quick=True, seed=0) for i in range(2)]
    assert torch.get_num_threads() == threads  # global torch state restored
    for name in ("base", "instruct"):
        for fname in ("model.safetensors", "tokenizer.json", "config.json"):
            a, b = (tmp_path / f"run{i}" / name / fname for i in range(2))
            assert a.read_bytes() == b.read_bytes(), f"{name}/{fname} differs between runs"
        first, second = (r[name] for r in runs)
        assert first["training"]["loss_curve"] == second["training"]["loss_curve"]
        assert first["heldout_eval"]["documents"] == second["heldout_eval"]["documents"]
    log = json.loads((tmp_path / "run0" / "instruct" / "training_log.json").read_text())
    assert log["quick"] and log["training"]["steps"] == train.QUICK.instruct_steps
    assert (tmp_path / "run0" / "instruct" / "chat_template.jinja").exists() or log["chat_template"]


def test_pydoc_and_code_extraction():
    text = "Title\n*****\n\nFirst prose paragraph of the section, long enough to be counted.\n\nMore.\n"
    assert list(data.pydoc_sections(text)) == [
        ("Title", "First prose paragraph of the section, long enough to be counted.")]
    code = 'def f(x):\n    """Return x doubled, exactly as the name says.\n\n    More.\n    """\n    return 2 * x\n'
    assert list(data.docstring_functions(code)) == [
        ("f", "def f(x):\n    return 2 * x", "Return x doubled, exactly as the name says.")]
    assert data.math_pairs("Question: What is 1 + 2?\nAnswer: 3\n") == [("What is 1 + 2?", "3")]
