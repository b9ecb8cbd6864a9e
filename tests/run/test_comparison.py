"""The comparison: the same tokens for every model, differences that match the per-token files, the seed
matrix with its artifacts flagged, a report rebuilt exactly from stored files, and clear refusals."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.cli import main
from tests.helpers import build_tiny_model

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory, llama_dir, tokenizer):
    """The tiny base model with perturbed weights and chat special tokens added, like a real instruct model."""
    folder = tmp_path_factory.mktemp("instruct")
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory, llama_dir, instruct_dir, pile_records):
    from tests.helpers import write_jsonl

    root = tmp_path_factory.mktemp("seed")
    corpus = write_jsonl(root / "pile.jsonl", pile_records)
    out = root / "out"
    code = main(["compare", "--base", str(llama_dir), "--instruct", str(instruct_dir), "--corpus", str(corpus),
                 "--out", str(out), "--seq-len", "96", "--batch-size", "3", "--bootstrap", "300",
                 "--device", "cpu", "--dtype", "float32", "--quiet"])
    assert code == 0
    return out


def _tokens(out, key, name):
    return pq.read_table(out / "runs" / key / name / "tokens.parquet").to_pandas()


def test_seed_matrix_gives_six_rows_with_artifacts_flagged(seed_run, capsys):
    results = json.loads((seed_run / "results.json").read_text())
    rows = results["configurations"]
    assert [r["key"] for r in rows] == ["shifted-single-causal", "shifted-batch-block", "shifted-batch-causal",
                                        "next-single-causal", "next-batch-block", "next-batch-causal"]
    assert results["mode"] == "tokens"
    for r in rows:
        assert r["computes"].startswith("predicts token t+2" if r["label_offset"] == 2 else "next-token loss")
        for name in ("base", "instruct"):
            tokens = _tokens(seed_run, r["key"], name)
            mean = tokens.nll.astype("float64").mean()
            stats = r["models"][name]
            assert stats["mean_nll"] == pytest.approx(mean, rel=1e-6)
            vocab = results["models"][name]["vocab_size"]
            assert stats["near_uniform"] == (mean >= 0.75 * math.log(vocab))
            if stats["near_uniform"]:
                code = "worse_than_uniform" if mean > math.log(vocab) else "near_uniform"
                assert any(d["code"] == code and d["where"] == f"{r['key']} / {name}"
                           for d in results["diagnostics"])
        # the difference equals the one computed independently from the two per-token files
        a, b = _tokens(seed_run, r["key"], "base"), _tokens(seed_run, r["key"], "instruct")
        assert (a[["doc_id", "pos", "target"]].values == b[["doc_id", "pos", "target"]].values).all()
        o = r["comparisons"]["instruct"]["overall"]
        assert o["diff"] == pytest.approx(b.nll.astype("float64").mean() - a.nll.astype("float64").mean(), abs=1e-6)
        assert o["relative_perplexity_change"] == pytest.approx(math.expm1(o["diff"]))
        assert o["ci_low"] <= o["diff"] <= o["ci_high"]
    report = (seed_run / "report.md").read_text()
    assert "| Test Setup | Attention Mask | Base Loss | Instruct Loss | Difference |" in report
    assert any("For the seed's own table: +0.144 nats is +15.5%" in f for f in results["findings"])


def test_chat_tokens_are_checked_and_reported(seed_run):
    results = json.loads((seed_run / "results.json").read_text())
    check = results["tokenizers"]["instruct"]
    assert check["compatible"] and check["documents_tokenized_differently"] == 0
    assert "never occur in this corpus" in check["verdict"]
    assert any(t in check["differences"][0] for t in CHAT_TOKENS)
    # both models were scored with the baseline's BOS/EOS
    a = json.loads((seed_run / "runs/next-batch-block/base/summary.json").read_text())
    b = json.loads((seed_run / "runs/next-batch-block/instruct/summary.json").read_text())
    assert a["special_tokens"] == b["special_tokens"] == {"bos_id": 1, "eos_id": 2}


def test_leakage_by_position_comes_from_block_and_causal_files(seed_run):
    results = json.loads((seed_run / "results.json").read_text())
    leak = next(x for x in results["leakage"] if x["label_offset"] == 1)
    block = _tokens(seed_run, leak["block"], "base")
    causal = _tokens(seed_run, leak["causal"], "base")
    diff = causal.nll.astype("float64") - block.nll.astype("float64")
    rows = {r["bucket"]: r for r in leak["models"]["base"]}
    first = block.pos == 1
    assert rows["1"]["mean_diff"] == pytest.approx(diff[first].mean(), abs=1e-9)
    assert rows["1"]["share_tokens"] == pytest.approx(first.mean())
    assert rows["all"]["mean_diff"] == pytest.approx(diff.mean(), abs=1e-9)
    assert abs(rows["1"]["mean_diff"]) > 10 * abs(rows["all"]["mean_diff"]) or abs(rows["1"]["mean_diff"]) > 0.05


def test_report_rebuilds_results_exactly(seed_run, tmp_path, capsys):
    copy_dir = tmp_path / "copy"
    shutil.copytree(seed_run, copy_dir)
    before = (copy_dir / "results.json").read_bytes()
    (copy_dir / "results.json").unlink()
    (copy_dir / "report.md").unlink()
    assert main(["report", str(copy_dir)]) == 0
    assert (copy_dir / "results.json").read_bytes() == before
    assert (copy_dir / "report.md").read_text() == (seed_run / "report.md").read_text()
    out = capsys.readouterr().out
    assert "Test Setup" in out and "report.html" in out


@pytest.mark.slow
def test_report_needs_neither_torch_nor_transformers(seed_run, tmp_path):
    """`lossgap report` only reads files: it must not pay torch's and transformers' ~5 s import."""
    copy_dir = tmp_path / "copy"
    shutil.copytree(seed_run, copy_dir)
    (copy_dir / "results.json").unlink()
    probe = ("import sys; from lossgap.cli import main; code = main(['report', sys.argv[1]]); "
             "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe, str(copy_dir)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[-1] == "0 False False", proc.stderr
    assert (copy_dir / "results.json").read_bytes() == (seed_run / "results.json").read_bytes()


def test_model_against_itself_differs_by_exactly_zero(tmp_path, llama_dir, pile_jsonl):
    out = tmp_path / "self"
    code = main(["compare", "--model", f"a={llama_dir}", "--model", f"b={llama_dir}", "--corpus", str(pile_jsonl),
                 "--out", str(out), "--matrix", "single", "--seq-len", "64", "--device", "cpu", "--quiet",
                 "--bootstrap", "200"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    (row,) = results["configurations"]
    o = row["comparisons"]["b"]["overall"]
    assert o["diff"] == 0.0 and o["ci_low"] <= 0.0 <= o["ci_high"]
    assert o["share_docs_worse"] == 0.0 and o["wilcoxon_p"] == 1.0
    for dom in row["comparisons"]["b"]["per_domain"].values():
        assert dom["diff"] == 0.0
    assert not any("seed" in f for f in results["findings"]), results["findings"]  # its figures: seed matrix only
    findings = "\n".join(results["findings"])  # the same loss in plain words: no direction, no share of a zero D
    assert "b and a give the same loss on this corpus (D = +0.0000 nats/token" in findings, findings
    assert "nan" not in findings.lower() and "% of D" not in findings and "than a" not in findings
    assert "largest" not in findings and "smallest" not in findings


def test_refusals(tmp_path, llama_dir, pile_jsonl, capsys, seed_run):
    # an output folder holding another comparison
    code = main(["compare", "--base", str(llama_dir), "--instruct", str(llama_dir), "--corpus", str(pile_jsonl),
                 "--out", str(seed_run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a comparison" in err and "--overwrite" in err
    # one model only
    code = main(["compare", "--base", str(llama_dir), "--corpus", str(pile_jsonl), "--out", str(tmp_path / "x")])
    assert code == 2 and "at least two models" in capsys.readouterr().err
    # report on a folder without a comparison, and on corrupt per-token files
    assert main(["report", str(tmp_path)]) == 1
    assert "no compare.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(seed_run, broken)
    (broken / "runs/next-batch-block/instruct/documents.parquet").write_bytes(b"not parquet")
    assert main(["report", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "documents.parquet: not a readable Parquet file" in err and "Traceback" not in err
    (broken / "runs/next-batch-block/instruct/documents.parquet").unlink()
    assert main(["report", str(broken)]) == 1
    assert "documents.parquet: missing" in capsys.readouterr().err


def test_different_tokenizers_compare_in_bits_per_byte(tmp_path, llama_dir, pile_jsonl, tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.helpers import stdlib_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(stdlib_texts(60)[::-1], trainer=trainer)
    other_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    other = build_tiny_model("llama", other_tok, tmp_path / "other")
    out = tmp_path / "bpb"
    code = main(["compare", "--base", str(llama_dir), "--instruct", str(other), "--corpus", str(pile_jsonl),
                 "--out", str(out), "--matrix", "single", "--seq-len", "64", "--device", "cpu", "--quiet",
                 "--bootstrap", "200"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "bits_per_byte"
    check = results["tokenizers"]["instruct"]
    assert not check["compatible"] and "compared in bits per byte only" in check["verdict"]
    (row,) = results["configurations"]
    o = row["comparisons"]["instruct"]["overall"]
    assert o["unit"] == "bits/byte"
    bpb = {n: row["models"][n]["bits_per_byte"] for n in ("base", "instruct")}
    assert o["diff"] == pytest.approx(bpb["instruct"] - bpb["base"], abs=1e-9)
    assert "bits per byte only" in results["findings"][0]


def test_config_file_fills_options_and_command_line_wins(tmp_path):
    from lossgap.cli import build_parser, compare_config_from_args

    parser, subs = build_parser()
    subs["compare"].apply_config_file(__import__("pathlib").Path("configs/llama31-8b-pile.toml"))
    args = parser.parse_args(["compare", "--config", "configs/llama31-8b-pile.toml", "--bootstrap", "200"])
    cfg = compare_config_from_args(args)
    assert cfg.models == [("base", "meta-llama/Llama-3.1-8B"), ("instruct", "meta-llama/Llama-3.1-8B-Instruct")]
    assert (cfg.model.dtype, cfg.model.device, cfg.layout.seq_len, cfg.matrix) == ("bfloat16", "cuda", 8192, "seed")
    assert cfg.corpus.sample == 2000 and cfg.bootstrap == 200 and cfg.run.batch_size == "auto"
    bad = tmp_path / "bad.toml"
    bad.write_text('sequence_length = 5\n')
    assert main(["compare", "--config", str(bad)]) == 2


def test_per_domain_numbers_match_the_token_files(seed_run):
    results = json.loads((seed_run / "results.json").read_text())
    row = next(r for r in results["configurations"] if r["key"] == "next-batch-block")
    a, b = _tokens(seed_run, "next-batch-block", "base"), _tokens(seed_run, "next-batch-block", "instruct")
    for domain, stats in row["comparisons"]["instruct"]["per_domain"].items():
        sel = (a.domain == domain).values
        expected = b.nll.values[sel].astype("float64").mean() - a.nll.values[sel].astype("float64").mean()
        assert stats["diff"] == pytest.approx(expected, abs=1e-6)
    assert np.isfinite([r["mean_nll"] for r in results["position_profile"]["models"]["base"]]).all()


def test_a_plan_for_some_configurations_runs_there_and_auto_elsewhere(tmp_path, llama_dir, pile_jsonl, seed_run):
    """--plan varlen serves the block-mask and single-document configurations; the causal packed ones run the
    automatic plan, and the numbers equal the default run's."""
    out = tmp_path / "varlen"
    code = main(["compare", "--base", str(llama_dir), "--instruct", str(llama_dir), "--corpus", str(pile_jsonl),
                 "--out", str(out), "--seq-len", "96", "--batch-size", "3", "--bootstrap", "100",
                 "--device", "cpu", "--dtype", "float32", "--quiet", "--plan", "varlen"])
    assert code == 0
    for run in sorted((out / "runs").glob("*/base/summary.json")):
        summary = json.loads(run.read_text())
        layout = summary["config"]["layout"]
        expected = "varlen" if layout["mask"] == "block" or layout["layout"] == "single" else "nomask"
        assert summary["plan"] == expected, run
        key = run.parent.parent.name
        ref = _tokens(seed_run, key, "base")
        got = _tokens(out, key, "base")
        assert np.abs(got.nll.values - ref.nll.values).max() <= 1e-4, key
    code = main(["compare", "--base", str(llama_dir), "--instruct", str(llama_dir), "--corpus", str(pile_jsonl),
                 "--out", str(tmp_path / "nomask"), "--matrix", "single", "--layout", "packed", "--mask", "block",
                 "--device", "cpu", "--quiet", "--plan", "nomask"])
    assert code == 2  # applies to no configuration: refused with its reason


@pytest.mark.slow
def test_compiled_comparison_gives_the_eager_numbers(tmp_path, llama_dir, instruct_dir, pile_jsonl, seed_run):
    """--compile through the command line: every configuration of the seed matrix, both models, compiled once per
    model, token for token as the eager run."""
    torch._dynamo.reset()
    out = tmp_path / "compiled"
    code = main(["compare", "--base", str(llama_dir), "--instruct", str(instruct_dir), "--corpus", str(pile_jsonl),
                 "--out", str(out), "--seq-len", "96", "--batch-size", "3", "--bootstrap", "100",
                 "--device", "cpu", "--dtype", "float32", "--quiet", "--compile"])
    assert code == 0
    runs = sorted((out / "runs").glob("*/*/summary.json"))
    assert len(runs) == 12
    for run in runs:
        assert json.loads(run.read_text())["compile"]["passed"], run
        key, name = run.parent.parent.name, run.parent.name
        got, ref = _tokens(out, key, name), _tokens(seed_run, key, name)
        assert np.abs(got.nll.values - ref.nll.values).max() <= 1e-4, (key, name)  # contract 3


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, llama_dir):
    """The tiny base model with perturbed weights and the base's tokenizer and vocabulary, so the paired pass runs."""
    tuned = tmp_path_factory.mktemp("tuned")
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tuned)
    shutil.copy(llama_dir / "tokenizer.json", tuned)
    shutil.copy(llama_dir / "tokenizer_config.json", tuned)
    return tuned


def test_compare_resume_continues_from_finished_runs_and_the_paired_shards(tmp_path, llama_dir, tuned_dir, pile_jsonl,
                                                                           capsys, monkeypatch):
    """An interrupted comparison continues with `compare --resume`: runs that finished are kept as they are (not
    scored again), the paired pass continues from its shards and those of the runs it writes, and the results equal
    an uninterrupted comparison's."""
    import errno

    from lossgap.run.shards import ShardStore

    def args(out):
        return ["compare", "--base", str(llama_dir), "--instruct", str(tuned_dir), "--corpus", str(pile_jsonl),
                "--out", str(out), "--seq-len", "64", "--window-tokens", "256",
                "--bootstrap", "200", "--device", "cpu", "--dtype", "float32", "--quiet"]

    assert main(args(tmp_path / "clean")) == 0
    original = ShardStore.write

    def paired_disk_full(self, window, table):
        if "pairs" in self.dir.parts and window >= 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, window, table)

    monkeypatch.setattr(ShardStore, "write", paired_disk_full)
    out = tmp_path / "resumed"
    assert main(args(out)) == 1
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(ShardStore, "write", original)
    summaries = {p: p.read_bytes() for p in (out / "runs").rglob("summary.json")}
    # the seed matrix's other layouts finished before the pass; its own layout's runs are the pass's, unfinished
    assert len(summaries) == 8 and not (out / "results.json").exists()
    assert main(args(out)) == 2 and "--resume" in capsys.readouterr().err  # a plain rerun is refused, saying how
    assert main([*args(out), "--resume"]) == 0
    assert all(p.read_bytes() == data for p, data in summaries.items())  # finished runs were not scored again
    for key in ("next-batch-block", "shifted-batch-block"):  # the pass's runs continued from their shards
        for name in ("base", "instruct"):
            summary = json.loads((out / "runs" / key / name / "summary.json").read_text())
            assert summary["complete"] and summary["windows_resumed"] >= 1
    clean, resumed = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "clean", out))
    assert clean["configurations"] == resumed["configurations"] and clean["explanation"] == resumed["explanation"]
    for name in ("instruct",):
        a, b = (pq.read_table(d / "pairs" / f"{name}.parquet") for d in (tmp_path / "clean", out))
        assert a.num_rows > 0 and a.equals(b)


TIMINGS = ("elapsed_seconds", "load_seconds", "scoring_seconds", "tokens_per_second", "data_wait_share",
           "startup_seconds")


@pytest.mark.parametrize(("dtype", "matrix"), [("float32", "single"), ("bfloat16", "seed")])
def test_the_paired_pass_writes_each_models_runs_as_a_separate_run_does(tmp_path, llama_dir, tuned_dir, pile_jsonl,
                                                                        dtype, matrix):
    """One forward pass per model for the main configuration's layout: the paired pass writes both models' runs of
    it (every label offset of the seed matrix's), and their files equal what each model's own run writes (a
    comparison without the explanation), but for the folder's name and the timings. compare.json says which pass
    wrote what."""
    def compare(out, *extra):
        assert main(["compare", "--base", str(llama_dir), "--instruct", str(tuned_dir), "--corpus", str(pile_jsonl),
                     "--out", str(out), "--matrix", matrix, "--seq-len", "64", "--batch-size", "2",
                     "--bootstrap", "100", "--device", "cpu", "--dtype", dtype, "--quiet", *extra]) == 0
        return json.loads((out / "compare.json").read_text())

    paired, alone = compare(tmp_path / "paired"), compare(tmp_path / "alone", "--no-explain")
    passes = {name: [p for p in paired["passes"] if name in p["models"]] for name in ("base", "instruct")}
    groups = 1 if matrix == "single" else 3
    assert [len(p) for p in passes.values()] == [groups, groups]  # one pass per layout and mask, the paired included
    (pair,) = [p for p in paired["passes"] if "pairs" in p]
    assert pair["runs_of"] == ["base", "instruct"] and paired["configurations"][0]["key"] in paired["runs"]
    written = pair["configurations"]
    assert len(written) == (1 if matrix == "single" else 2)
    assert len(alone["passes"]) == 2 * groups and not any("pairs" in p for p in alone["passes"])
    root = str(tmp_path / "paired")
    for key in written:
        for name in ("base", "instruct"):
            a, b = (tmp_path / d / "runs" / key / name for d in ("paired", "alone"))
            for file in ("tokens.parquet", "documents.parquet"):
                ta, tb = pq.read_table(a / file), pq.read_table(b / file)
                assert ta.num_rows > 0 and ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None))
                meta_a = ta.schema.metadata[b"lossgap"].decode()
                assert meta_a == tb.schema.metadata[b"lossgap"].decode().replace(str(tmp_path / "alone"), root)
            sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
            assert sa["run_sha256"] == sb["run_sha256"]  # the same inputs: --resume takes either for the other
            if dtype != "float32":
                assert sa["fp32_check"]["tokens"] > 0
            for s in (sa, sb):
                for k in TIMINGS:
                    s.pop(k)
            assert json.loads(json.dumps(sa).replace(root, str(tmp_path / "alone"))) == sb


def test_the_tokenizer_check_of_a_capped_comparison_reads_a_bounded_prefix(tmp_path):
    from lossgap.config import CorpusConfig
    from lossgap.data.corpus import Corpus
    from lossgap.run.comparison import _capped_texts
    from tests.helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "short one"}, {"text": "x" * (3 << 20)}, {"text": "after"}])
    capped = list(_capped_texts(Corpus(CorpusConfig(str(corpus))), 100))
    assert capped[0] == "short one" and sum(map(len, capped)) == 1 << 20 and len(capped) == 2
    whole = list(_capped_texts(Corpus(CorpusConfig(str(corpus))), None))
    assert [len(t) for t in whole] == [9, 3 << 20, 5]


def test_a_chat_run_whose_rows_would_pass_the_models_positions_is_refused_before_loading(tmp_path, llama_dir,
                                                                                         instruct_dir, pile_jsonl,
                                                                                         capsys):
    """The chat-formatted run puts the template before every segment, so its rows are --seq-len plus the prefix."""
    code = main(["compare", "--base", str(llama_dir), "--instruct", str(instruct_dir), "--corpus", str(pile_jsonl),
                 "--out", str(tmp_path / "out"), "--chat-context", "--seq-len", "256", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--chat-context places instruct's chat template (" in err and "256 positions" in err, err
    assert "use --seq-len" in err and not (tmp_path / "out" / "runs").exists()
