"""The explanation of a comparison end to end: the paired pass inside `lossgap compare`, attributions that add up, the
chat-formatted run, the bits-per-byte fallback, the memory check, and the report with its token view."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.cli import main
from lossgap.errors import ModelError
from tests.helpers import missing_input, tiny_config, write_jsonl

CHAT_TEMPLATE = ("{%- for m in messages -%}{{- '<bos>' + m['role'] + '\\n' + m['content'] + '<eos>' -}}{%- endfor -%}"
                 "{%- if add_generation_prompt -%}{{- '<bos>assistant\\n' -}}{%- endif -%}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer) -> dict:
    """A tiny Llama baseline and a second Llama (another seed) with a chat template: one tokenizer, two models."""
    root = tmp_path_factory.mktemp("pair")
    folders = {}
    for name, seed in (("base", 0), ("sft", 1)):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer))).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        if name == "sft":
            config = json.loads((root / name / "tokenizer_config.json").read_text())
            config["chat_template"] = CHAT_TEMPLATE
            (root / name / "tokenizer_config.json").write_text(json.dumps(config))
        folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def compared(tmp_path_factory, pair, pile_records) -> dict:
    root = tmp_path_factory.mktemp("explained")
    corpus = write_jsonl(root / "pile.jsonl", pile_records)
    out = root / "cmp"
    code = main(["compare", "--base", str(pair["base"]), "--model", f"sft={pair['sft']}", "--corpus", str(corpus),
                 "--out", str(out), "--matrix", "single", "--seq-len", "96", "--batch-size", "2", "--device", "cpu",
                 "--dtype", "float32", "--chat-context", "--bootstrap", "200", "--quiet"])
    assert code == 0
    return {"out": out, "corpus": corpus, "results": json.loads((out / "results.json").read_text())}


def test_contributions_add_up_to_the_headline_difference(compared):
    results = compared["results"]
    entry = results["explanation"]["models"]["sft"]
    headline = results["configurations"][0]["comparisons"]["sft"]["overall"]["diff"]
    dims = entry["attribution"]["dimensions"]
    assert set(dims) == {"domain", "position", "context", "text_class", "frequency", "confidence", "agreement"}
    for name, dim in dims.items():
        assert abs(sum(b["contribution"] for b in dim["buckets"]) - dim["diff"]) < 1e-9, name
        assert abs(sum(b["n_tokens"] for b in dim["buckets"]) - dim["n_tokens"]) == 0
    # D from the paired pass equals the headline from the two models' own runs (fp32: the same numbers to 1e-5)
    assert abs(dims["domain"]["diff"] - headline) < 1e-5
    overall = results["configurations"][0]["comparisons"]["sft"]["overall"]
    for dim in dims.values():  # one seed (bootstrap.comparison_seed): D has the headline's interval wherever shown
        assert dim["ci_low"] == pytest.approx(overall["ci_low"], abs=1e-5), dim
        assert dim["ci_high"] == pytest.approx(overall["ci_high"], abs=1e-5), dim


def test_pairs_file_and_the_statistics_it_gives(compared):
    out, results = compared["out"], compared["results"]
    pairs = pq.read_table(out / "pairs" / "sft.parquet").to_pandas()
    runs = {n: pq.read_table(out / "runs" / "k1-packed-block" / n / "tokens.parquet").to_pandas()
            for n in ("base", "sft")}
    for n, run in runs.items():
        assert np.abs(run["nll"].to_numpy() - pairs[f"nll_{n}"].to_numpy()).max() <= 1e-5
    dist = results["explanation"]["models"]["sft"]["distribution"]["overall"]
    kl = pairs["kl_base_sft"].to_numpy(np.float64)
    assert dist["kl_bo"]["mean"] == pytest.approx(kl.mean(), abs=1e-9)
    assert dist["kl_bo"]["median"] == pytest.approx(np.percentile(kl, 50), abs=1e-9)
    assert dist["kl_bo"]["se"] == pytest.approx(kl.std(ddof=1) / np.sqrt(kl.size), rel=1e-9)
    assert dist["same_top"]["share"] == pytest.approx(pairs["top1_agree"].mean(), abs=1e-12)
    assert not (out / "pairs" / ".sft").exists()  # the shards are merged and removed


def test_chat_formatted_run_pairs_with_the_same_targets(compared):
    out, results = compared["out"], compared["results"]
    chat = results["explanation"]["models"]["sft"]["chat"]
    raw = pq.read_table(out / "runs" / "k1-packed-block" / "sft" / "tokens.parquet").to_pandas()
    formatted = pq.read_table(out / chat["run"] / "tokens.parquet").to_pandas()
    for column in ("doc_id", "pos", "target"):
        assert (raw[column].to_numpy() == formatted[column].to_numpy()).all()
    assert chat["raw_diff"] - chat["chat_diff"] == pytest.approx(chat["reduction"], abs=1e-9)
    base = pq.read_table(out / "runs" / "k1-packed-block" / "base" / "tokens.parquet").to_pandas()
    expected = (formatted["nll"].to_numpy(np.float64) - base["nll"].to_numpy(np.float64)).mean()
    assert chat["chat_diff"] == pytest.approx(expected, abs=1e-9)
    assert any("Chat format" in f for f in results["findings"])


def test_chat_change_per_domain_recomputed_from_the_stored_runs(compared):
    """Each domain's D raw, D chat-formatted and the change, from the runs' tokens.parquet files and the domains of
    documents.parquet; the report shows them."""
    out, results = compared["out"], compared["results"]
    chat = results["explanation"]["models"]["sft"]["chat"]
    runs = out / "runs" / "k1-packed-block"
    nll = {name: pq.read_table(path / "tokens.parquet").column("nll").to_numpy().astype(np.float64)
           for name, path in (("base", runs / "base"), ("raw", runs / "sft"), ("chat", out / chat["run"]))}
    doc_id = pq.read_table(runs / "base" / "tokens.parquet").column("doc_id").to_numpy()
    docs = pq.read_table(runs / "base" / "documents.parquet", columns=["doc_id", "domain"]).to_pydict()
    domain = np.array([dict(zip(docs["doc_id"], docs["domain"], strict=True))[d] for d in doc_id.tolist()])
    assert sorted(chat["per_domain"]) == sorted(set(domain.tolist())) and len(chat["per_domain"]) == 2
    for name, d in chat["per_domain"].items():
        sel = domain == name
        raw_diff = (nll["raw"][sel] - nll["base"][sel]).mean()
        chat_diff = (nll["chat"][sel] - nll["base"][sel]).mean()
        assert (d["n_tokens"], d["n_documents"]) == (sel.sum(), np.unique(doc_id[sel]).size)
        assert (d["raw_diff"], d["chat_diff"], d["reduction"]) == pytest.approx(
            (raw_diff, chat_diff, raw_diff - chat_diff), abs=1e-9)
        assert d["reduction_ci"][0] <= d["reduction_ci"][1]
    md = (out / "report.md").read_text()
    assert "### sft: the chat format's effect per domain" in md
    assert all(f"| {name} | {d['n_tokens']:,} | {d['raw_diff']:+.4f} | {d['chat_diff']:+.4f} |" in md
               for name, d in chat["per_domain"].items())


def test_context_is_the_position_less_what_a_row_edge_cut(compared):
    """The paired pass's context column: for a token of an uncut document its position; for a continued segment the
    tokens from the segment's first, recomputed from the packed rows (--seq-len 96, documents in order)."""
    out = compared["out"]
    pairs = pq.read_table(out / "pairs" / "sft.parquet", columns=["doc_id", "pos", "truncated", "context"]).to_pandas()
    whole = pairs[~pairs["truncated"]]
    assert (whole["context"] == whole["pos"]).all()
    cut = pairs[pairs["truncated"]]
    assert len(cut) and (cut["context"] < cut["pos"]).all() and (cut["context"] >= 1).all()
    for _, rows in cut.groupby("doc_id"):  # within a continued segment the context grows by one per token
        steps = np.diff(rows["context"].to_numpy())
        assert set(steps.tolist()) <= {1} | {int(x) for x in steps[steps < 0]}  # a new row restarts it
        assert rows["context"].iloc[0] == 1  # the segment's first target sees its first token only
    dims = compared["results"]["explanation"]["models"]["sft"]["attribution"]["dimensions"]
    assert sum(b["n_tokens"] for b in dims["context"]["buckets"]) == len(pairs)
    assert abs(sum(b["contribution"] for b in dims["context"]["buckets"]) - dims["context"]["diff"]) < 1e-9


def test_the_chat_change_is_sampled_over_several_user_turns(compared):
    """--chat-turns (3 by default): one chat-formatted run per neutral user turn, each change recomputed from its
    stored run; the first is the headline chat run, with the same interval; the report and findings give the spread."""
    from lossgap.config import DEFAULT_CHAT_USER_TURN

    out, results = compared["out"], compared["results"]
    chat = results["explanation"]["models"]["sft"]["chat"]
    manifest = json.loads((out / "compare.json").read_text())
    turns = manifest["explanation"]["chat_user_turns"]
    assert len(turns) == 3 and turns[0] == DEFAULT_CHAT_USER_TURN and len(set(turns)) == 3
    runs = manifest["explanation"]["chat_runs_by_turn"]["sft"]
    assert runs[0] == chat["run"] and len(set(runs)) == 3
    assert [p.get("user_turn") for p in manifest["passes"] if p.get("chat")] == turns
    base_dir = out / "runs" / "k1-packed-block"
    base = pq.read_table(base_dir / "base" / "tokens.parquet").column("nll").to_numpy().astype(np.float64)
    raw = pq.read_table(base_dir / "sft" / "tokens.parquet").column("nll").to_numpy().astype(np.float64)
    per = chat["turns"]["per_turn"]
    changes = []
    for p, rel in zip(per, runs, strict=True):
        formatted = pq.read_table(out / rel / "tokens.parquet").column("nll").to_numpy().astype(np.float64)
        changes.append((formatted - base).mean() - (raw - base).mean())
        assert -p["reduction"] == pytest.approx(changes[-1], abs=1e-9)
    assert per[0]["reduction"] == pytest.approx(chat["reduction"]) and per[0]["reduction_ci"] == chat["reduction_ci"]
    assert chat["turns"]["change_min"] == pytest.approx(min(changes)) and chat["turns"]["change_max"] == pytest.approx(
        max(changes))
    assert len(set(np.round(changes, 9))) == 3  # the turn changes the prediction
    md = (out / "report.md").read_text()
    assert "### sft: the chat format's change by user turn" in md and f"{turns[1]!r}" in md
    assert any(f.endswith(f"(mean {chat['turns']['change_mean']:+.4f}), in the same direction after every one.")
               or "opposite directions depending on the turn" in f for f in results["findings"])


@pytest.fixture(scope="module")
def ended(tmp_path_factory, pile_records) -> dict:
    """The shipped demo pair with --chat-end-of-turn: its instruct model's ChatML template closes a reply with
    <|im_end|> (id 2), the raw documents end with <|endoftext|> (id 0)."""
    from lossgap.demo import DEMO_MODELS

    root = tmp_path_factory.mktemp("ended")
    corpus = write_jsonl(root / "pile.jsonl", pile_records[:16])
    out = root / "cmp"
    assert main(["compare", "--base", str(DEMO_MODELS / "base"), "--instruct", str(DEMO_MODELS / "instruct"),
                 "--corpus", str(corpus), "--out", str(out), "--matrix", "single", "--seq-len", "96", "--batch-size",
                 "2", "--device", "cpu", "--dtype", "float32", "--chat-context", "--chat-end-of-turn", "--chat-turns",
                 "2", "--bootstrap", "200", "--quiet"]) == 0
    return {"out": out, "results": json.loads((out / "results.json").read_text())}


def test_an_end_of_turn_final_target_is_recorded_counted_and_set_apart(ended):
    """The chat-formatted run differs from the raw one in each whole document's final target alone (<|im_end|>
    against <|endoftext|>), with the raw run's truncated flags; the change is over the tokens both share, and apart
    over all tokens and over the final targets, each recomputed from the stored runs; the report and the findings
    say which final target each run has and how many differ."""
    out, results = ended["out"], ended["results"]
    manifest = json.loads((out / "compare.json").read_text())
    e = manifest["explanation"]
    assert e["chat_end_of_turn"] is True and e["chat_end_of_turn_ids"] == {"instruct": 2}
    assert manifest["config"]["tokenize"]["chat_end_of_turn"] is True
    chat = results["explanation"]["models"]["instruct"]["chat"]
    runs = out / "runs" / "k1-packed-block"
    base, raw, formatted = (pq.read_table(path / "tokens.parquet").to_pandas()
                            for path in (runs / "base", runs / "instruct", out / chat["run"]))
    assert (raw["truncated"].to_numpy() == formatted["truncated"].to_numpy()).all() and raw["truncated"].any()
    last = raw.groupby("doc_id")["pos"].transform("max").to_numpy() == raw["pos"].to_numpy()
    differ = raw["target"].to_numpy() != formatted["target"].to_numpy()
    assert (differ == last).all()  # every document is whole: each one's final target, and nothing else, differs
    assert set(raw["target"][last]) == {0} and set(formatted["target"][last]) == {2}
    final = chat["final_targets"]
    assert final["raw"] == {"id": 0, "text": "<|endoftext|>"} and final["chat"] == {"id": 2, "text": "<|im_end|>"}
    assert (final["n_tokens"], final["n_differ"], final["n_shared"]) == (len(raw), last.sum(), (~last).sum())
    nll = {k: t["nll"].to_numpy(np.float64) for k, t in (("b", base), ("raw", raw), ("chat", formatted))}
    for sel, got in ((~last, chat), (np.ones(len(raw), bool), final["all_tokens"]), (last, final["final"])):
        d_raw, d_chat = (nll["raw"][sel] - nll["b"][sel]).mean(), (nll["chat"][sel] - nll["b"][sel]).mean()
        assert (got["raw_diff"], got["chat_diff"], got["reduction"]) == pytest.approx((d_raw, d_chat, d_raw - d_chat),
                                                                                       abs=1e-9)
    assert sum(d["n_tokens"] for d in chat["per_domain"].values()) == final["n_shared"]
    assert [t["n_tokens"] for t in chat["turns"]["per_turn"]] == [final["n_shared"]] * 2
    md = html.unescape((out / "report.md").read_text()).replace("\\|", "|")  # as Markdown escapes them
    assert ("the targets are the raw run's but for each whole document's final target: <|endoftext|> in the raw "
            f"run, <|im_end|> (its template's end-of-turn token, --chat-end-of-turn) in the chat-formatted run, "
            f"{final['n_differ']:,} of {final['n_tokens']:,} targets.") in md
    assert (f"the {final['n_differ']:,} final targets alone: <|endoftext|> in the raw run, <|im_end|> in the "
            "chat-formatted run") in md
    (finding,) = [f for f in results["findings"] if f.startswith("Chat format")]
    assert (f"Its chat-formatted run ends each whole document with <|im_end|>, its end-of-turn token, where the raw "
            f"run has <|endoftext|>: {final['n_differ']:,} of {final['n_tokens']:,} targets differ") in finding


def _split_by_hand(stored: dict) -> dict:
    """The temperature split recomputed from pairs/<other>.temperature.json as an outsider would: per-document
    sums."""
    docs = {k: np.asarray(v, np.float64) for k, v in stored["documents"].items()}
    n = docs["n_tokens"].sum()
    d = (docs["nll_other"] - docs["nll_baseline"]).sum() / n
    rest = (docs["nll_other_tempered"] - docs["nll_baseline_tempered"]).sum() / n
    return {"d": d, "rest": rest, "removed": d - rest}


def test_the_temperature_split_recomputed_from_its_stored_file(compared):
    """pairs/sft.temperature.json (recorded in compare.json): the split from its per-document sums by hand, adding up
    to D; the corpus fits the token budget, so the sample is every row: D and its interval are the headline's, and
    each document's NLL sums the pairs file's; the report and the findings show it."""
    from lossgap.run.temperature import TOKEN_BUDGET

    out, results = compared["out"], compared["results"]
    manifest = json.loads((out / "compare.json").read_text())
    assert manifest["explanation"]["temperature"] == {"sft": "pairs/sft.temperature.json"}
    stored = json.loads((out / "pairs" / "sft.temperature.json").read_text())
    tp = results["explanation"]["models"]["sft"]["mechanisms"]["temperature"]
    hand = _split_by_hand(stored)
    assert tp["d"]["value"] == pytest.approx(hand["d"], abs=1e-12)
    assert tp["d_tempered"]["value"] == pytest.approx(hand["rest"], abs=1e-12)
    assert tp["removed"]["value"] + tp["d_tempered"]["value"] == pytest.approx(tp["d"]["value"], abs=1e-15)
    for role, name in (("baseline", "base"), ("other", "sft")):
        fit = stored["models"][role]
        assert fit["name"] == name and fit["converged"]
        # these random models lose to the uniform distribution: their best temperature is infinite (beta = 0)
        assert fit["temperature"] == pytest.approx(1 / fit["beta"]) if fit["beta"] else fit["temperature"] is None
        assert tp["models"][role]["gain"]["value"] >= 0  # the fitted temperature is the sample's best
    sample = stored["sample"]
    assert sample["whole"] and sample["token_budget"] == TOKEN_BUDGET and sample["seed"] == manifest["seed"]
    overall = results["configurations"][0]["comparisons"]["sft"]["overall"]
    assert tp["n_tokens"] == overall["n_tokens"] and tp["d"]["value"] == pytest.approx(overall["diff"], abs=1e-5)
    assert (tp["d"]["ci_low"], tp["d"]["ci_high"]) == pytest.approx((overall["ci_low"], overall["ci_high"]), abs=1e-5)
    pairs = pq.read_table(out / "pairs" / "sft.parquet", columns=["doc_id", "nll_base", "nll_sft"]).to_pandas()
    sums = pairs.astype({"nll_base": np.float64, "nll_sft": np.float64}).groupby("doc_id").sum()
    assert stored["documents"]["doc_id"] == sums.index.tolist()
    assert np.abs(np.asarray(stored["documents"]["nll_other"]) - sums["nll_sft"].to_numpy()).max() < 1e-4
    assert np.abs(np.asarray(stored["documents"]["nll_baseline"]) - sums["nll_base"].to_numpy()).max() < 1e-4
    md = (out / "report.md").read_text()
    assert "### sft: how much of D is sharpness" in md and f"| {tp['d']['value']:+.4f} |" in md
    assert any(f.startswith("Temperature (fitted on all ") for f in results["findings"])


def test_logits_twice_the_baselines_are_all_sharpness(tmp_path, pair, pile_records, tokenizer, monkeypatch):
    """The baseline against a copy whose output weight is doubled (its logits exactly twice the baseline's): its
    fitted T is twice the baseline's, and the temperatures remove all of D; on a sample of the rows (a budget of 300
    tokens), stated in the file and the report."""
    monkeypatch.setattr("lossgap.run.temperature.TOKEN_BUDGET", 300)
    sharp = AutoModelForCausalLM.from_pretrained(pair["base"], dtype=torch.float32)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(2)
    sharp.save_pretrained(tmp_path / "sharp")
    tokenizer.save_pretrained(tmp_path / "sharp")
    corpus = write_jsonl(tmp_path / "pile.jsonl", pile_records[:8])
    out = tmp_path / "cmp"
    assert main(["compare", "--base", str(pair["base"]), "--model", f"sharp={tmp_path / 'sharp'}", "--corpus",
                 str(corpus), "--out", str(out), "--matrix", "single", "--seq-len", "96", "--device", "cpu",
                 "--dtype", "float32", "--bootstrap", "100", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    tp = results["explanation"]["models"]["sharp"]["mechanisms"]["temperature"]
    models = tp["models"]
    assert models["baseline"]["beta"] > 0  # this model ranks the sample's tokens better than chance
    assert models["other"]["temperature"] == pytest.approx(2 * models["baseline"]["temperature"], rel=1e-8)
    sample = tp["sample"]
    assert not sample["whole"] and sample["rows"] < sample["rows_in_corpus"]
    assert sample["token_budget"] == 300 and sample["tokens"] == tp["n_tokens"]  # rows drawn with p = 300 / total
    assert f"a sample of {tp['n_tokens']:,} scored tokens" in (out / "report.md").read_text()
    assert tp["d"]["value"] > 0.01
    assert tp["removed"]["value"] == pytest.approx(tp["d"]["value"], abs=1e-9)
    assert abs(tp["d_tempered"]["value"]) < 1e-9
    assert any("the temperatures close the gap: all of D is sharpness" in f for f in results["findings"])


def test_report_rebuilds_the_explanation_byte_for_byte(compared, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(compared["out"], copy)
    before = {f: (copy / f).read_bytes() for f in ("results.json", "report.html", "report.md", "contributions.csv")}
    assert main(["report", str(copy)]) == 0
    capsys.readouterr()
    for name, data in before.items():
        assert (copy / name).read_bytes() == data, name
    md = (copy / "report.md").read_text()
    assert "## Where the difference comes from" in md and "Text class of the target token" in md


@pytest.mark.parametrize("damaged", ["pairs/sft.parquet", "vocab/base.parquet",
                                     "runs/k1-packed-block-chat/sft/tokens.parquet"])
def test_report_names_a_damaged_explanation_file(compared, tmp_path, capsys, damaged):
    """Every stored file the explanation reads is read through a checked reader: a truncated one gets the message a
    truncated documents.parquet gets (tests/run/test_comparison.py), never "internal error"."""
    copy = tmp_path / "copy"
    shutil.copytree(compared["out"], copy)
    path = copy / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["report", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: not a readable Parquet file" in err and "fix: rerun compare" in err
    assert "internal error" not in err and "Traceback" not in err


def test_report_names_a_damaged_temperature_file(compared, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(compared["out"], copy)
    path = copy / "pairs" / "sft.temperature.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["report", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: corrupt" in err and "fix: rerun compare" in err and "Traceback" not in err


def test_a_model_against_itself_attributes_nothing(tmp_path, pair, pile_records):
    corpus = write_jsonl(tmp_path / "pile.jsonl", pile_records[:8])
    out = tmp_path / "same"
    assert main(["compare", "--base", str(pair["base"]), "--model", f"twin={pair['base']}", "--corpus", str(corpus),
                 "--out", str(out), "--matrix", "single", "--seq-len", "96", "--device", "cpu", "--dtype", "float32",
                 "--bootstrap", "100", "--quiet"]) == 0
    entry = json.loads((out / "results.json").read_text())["explanation"]["models"]["twin"]
    assert entry["distribution"]["overall"]["kl_bo"]["max"] < 1e-6
    assert entry["distribution"]["overall"]["same_top"]["share"] == 1.0
    for dim in entry["attribution"]["dimensions"].values():
        assert all(b["contribution"] == 0 for b in dim["buckets"])
    tp = entry["mechanisms"]["temperature"]
    assert tp["models"]["baseline"]["temperature"] == tp["models"]["other"]["temperature"]
    assert tp["d"]["value"] == tp["removed"]["value"] == tp["d_tempered"]["value"] == 0


def test_two_models_that_do_not_fit_are_refused_before_any_model_loads(tmp_path, pair, pile_records, monkeypatch,
                                                                       capsys):
    from lossgap.engine import memory

    corpus = write_jsonl(tmp_path / "pile.jsonl", pile_records[:4])
    sizes = memory.model_shape(memory.ModelConfig(str(pair["base"]), dtype="float32", device="cpu")).weight_bytes
    monkeypatch.setattr(memory, "available_bytes", lambda cfg: int(1.5 * sizes))  # one model fits, not two
    loads = []
    monkeypatch.setattr("lossgap.run.comparison.load_model", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    code = main(["compare", "--base", str(pair["base"]), "--model", f"sft={pair['sft']}", "--corpus", str(corpus),
                 "--out", str(tmp_path / "c"), "--matrix", "single", "--device", "cpu", "--dtype", "float32"])
    err = capsys.readouterr().err
    assert code == 1 and not loads
    assert "do not fit in memory together" in err and "--device-map auto" in err and "--no-explain" in err
    with pytest.raises(ModelError):
        memory.require_room_for_pair({"base": memory.ModelConfig(str(pair["base"]), device="cpu", dtype="float32"),
                                      "sft": memory.ModelConfig(str(pair["sft"]), device="cpu", dtype="float32")},
                                     "base")


def test_different_tokenizers_are_attributed_in_bits_per_byte(tmp_path, tiny_models, pile_records):
    """Qwen2's tokenizer class splits text differently from the baseline's: no distribution statistics, and the
    difference in bits per byte split by byte class, adding up."""
    corpus = write_jsonl(tmp_path / "pile.jsonl", pile_records[:10])
    out = tmp_path / "bpb"
    assert main(["compare", "--base", str(tiny_models["llama"]), "--model", f"q={tiny_models['qwen2']}", "--corpus",
                 str(corpus), "--out", str(out), "--matrix", "single", "--seq-len", "96", "--device", "cpu",
                 "--dtype", "float32", "--bootstrap", "100", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "bits_per_byte"
    entry = results["explanation"]["models"]["q"]
    assert "tokenizers differ" in entry["skipped"] and "distribution" not in entry
    bpb = entry["bits_per_byte"]
    assert abs(sum(c["contribution"] for c in bpb["classes"]) - bpb["diff"]) < 1e-9
    headline = results["configurations"][0]["comparisons"]["q"]["overall"]["diff"]
    assert bpb["diff"] == pytest.approx(headline, abs=1e-9)


@pytest.mark.slow
def test_token_view_renders_in_headless_chromium(compared, tmp_path):
    if shutil.which("chromium") is None:
        missing_input("needs Debian's chromium (apt-get install chromium)")
    from matplotlib.image import imread

    page = compared["out"] / "report.html"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2400"]
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'a'}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    view = compared["results"]["explanation"]["models"]["sft"]["token_view"]
    blocks = [*view["other_worse"], *view["other_better"], *(d for docs in view["documents"].values() for d in docs)]
    n_tokens = sum(len(b["tokens"]) for b in blocks)
    assert view["documents"]["other_worse"] and len(blocks) == dom.count('class="tokview"')
    assert len(re.findall(r'<span class="tok[ a-z]*"', dom)) == n_tokens > 0
    assert "Where the difference comes from" in dom and 'title="base NLL' in dom
    shot = tmp_path / "shot.png"
    anchor = page.as_uri() + "#where-the-difference-comes-from"
    subprocess.run([*base, f"--user-data-dir={tmp_path / 'b'}", f"--screenshot={shot}", anchor], check=True,
                   capture_output=True, timeout=120)
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05 and (pixels < 0.95).any(axis=-1).mean() > 0.05  # not blank
