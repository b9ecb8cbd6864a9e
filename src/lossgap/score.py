"""`lossgap.score`: one model on one corpus, from the file on disk to per-token losses, documents and a summary."""

from __future__ import annotations

import errno
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .batching import AUTO, auto_batch_size, cap_rows
from .compiled import check_compiled, compile_layers, eager
from .config import ScoreConfig
from .corpus import Corpus
from .dist import init_distributed
from .encode import encode_documents, resolve_special_tokens
from .errors import LossgapError, ModelError, UsageError
from .head import OutputHead
from .layout import Batch, make_rows, retarget, windows
from .model import LoadedModel, load_model, resolve_seq_len
from .plans import choose_plan, make_plan, restore_attention
from .prefetch import Prefetch
from .probe import probe_mask, require_probe
from .shards import ShardStore, corpus_fingerprint, model_fingerprint
from .stats import summarize_documents
from .store import (
    SUMMARY_FILE,
    DocumentTable,
    TokenWriter,
    existing_run_files,
    token_table,
    write_documents,
    write_json,
)

SCHEMA_VERSION = 1


@dataclass
class ScoreResult:
    out_dir: Path
    summary: dict

    @property
    def tokens_path(self) -> Path:
        return self.out_dir / "tokens.parquet"

    @property
    def documents_path(self) -> Path:
        return self.out_dir / "documents.parquet"


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix runs: an output folder holding a previous run needs --overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder")
    found = existing_run_files(out_dir) if out_dir.exists() else []
    if found and not overwrite:
        raise UsageError(
            f"--out {out_dir} already holds a run ({', '.join(found)})",
            "choose another --out, or pass --overwrite to replace those files",
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def library_versions() -> dict:
    import pyarrow
    import tokenizers
    import transformers

    return {
        "lossgap": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
    }


def score(cfg: ScoreConfig, loaded: LoadedModel | None = None, tokenizer=None) -> ScoreResult:
    """Score every document of the corpus with one model; write tokens.parquet, documents.parquet, summary.json.

    `loaded` reuses a model already in memory (a comparison scores several configurations per model);
    `tokenizer` replaces the model's own (a comparison tokenizes every model's input with one tokenizer).
    Under torchrun each rank scores its share of the windows and rank 0 merges; results are written per window,
    so `--resume` continues an interrupted run.
    """
    return score_offsets([cfg], loaded, tokenizer)[0]


@dataclass
class _Output:
    """One label offset's results: its folder, shards, documents and metadata."""

    cfg: ScoreConfig
    metadata: dict
    shards: ShardStore
    documents: DocumentTable
    resumed: int = 0

    @property
    def k(self) -> int:
        return self.cfg.layout.label_offset


def score_offsets(cfgs: list[ScoreConfig], loaded: LoadedModel | None = None, tokenizer=None) -> list[ScoreResult]:
    """`score` for several label offsets of one configuration, each into its own folder, from one forward pass per
    batch: the rows and hidden states do not depend on the offset, only the targets gathered from them do (the seed
    matrix scores offsets 1 and 2 of every layout and mask, so a comparison runs half the forward passes). The
    configurations may differ only in layout.label_offset and run.out. Results come in the order of cfgs."""
    started = time.perf_counter()
    for c in cfgs:
        c.validate()
    _check_offset_siblings(cfgs)
    cfg = min(cfgs, key=lambda c: c.layout.label_offset)  # rows for the smallest offset serve the others
    dist = init_distributed(cfg.model.device)
    corpus = Corpus(cfg.corpus)
    if dist.main:
        for c in cfgs:
            prepare_out_dir(c.out_dir, c.run.overwrite or c.run.resume)
    dist.barrier()

    if loaded is None:
        loaded = load_model(cfg.model, quiet=cfg.run.quiet, local_rank=dist.local_rank)
    tokenizer = tokenizer or loaded.tokenizer
    seq_len = resolve_seq_len(loaded, cfg.layout.seq_len)
    for c in cfgs:
        c.layout.seq_len = seq_len
        c.layout.validate()
    special = resolve_special_tokens(tokenizer, cfg.tokenize, loaded.vocab_size)
    restore_attention(loaded.model)  # a run that failed on this model may have left a plan's attention on it
    head = OutputHead(loaded.model, cfg.run.loss_chunk_mb, cfg.run.loss_kernel)
    head_diff = head.verify(loaded.vocab_size)
    kernel_check = head.check_kernel(loaded.vocab_size)
    if kernel_check is not None and not kernel_check["passed"] and cfg.run.loss_kernel == "cce":
        raise ModelError(f"--loss-kernel cce: on {loaded.name} its per-token loss is "
                         f"{kernel_check['max_abs_diff_vs_float64']:.3g} from float64, the tiled path's "
                         f"{kernel_check['tiled_max_abs_diff_vs_float64']:.3g}", "use --loss-kernel tiled")
    positions = cfg.layout.position_mode
    plan_name = choose_plan(cfg.run.plan, cfg.layout.mask, positions, loaded.device, cfg.layout.layout)
    auto_batch = cfg.run.batch_size == AUTO
    plan = make_plan(plan_name, loaded.model, cfg.layout.mask, positions, cfg.layout.label_offset,
                     1 if auto_batch else cfg.run.batch_size, cfg.run.batch_tokens, cfg.run.mask_heads)
    sizing = auto_batch_size(plan, head, seq_len, loaded.vocab_size) if auto_batch else None
    if sizing is not None:  # tensor parallel ranks run the same batches: all take the smallest
        plan.batch_size = int(dist.min(sizing.rows)) if cfg.model.tp else sizing.rows
    compile_check = None
    if cfg.run.compile:  # after sizing (measured eager: the larger), before the probe (which must see what scores)
        compile_check = {"layer": compile_layers(loaded.model),
                         **check_compiled(plan, head, loaded.vocab_size, loaded.name)}
    probe = probe_mask(plan, head, loaded.vocab_size) if cfg.run.probe else None
    if probe is not None:
        require_probe(probe, loaded.name, loaded.attn)
    load_seconds = time.perf_counter() - started

    # windows must not depend on a measured batch size: every rank and every resumed run cuts the same windows
    window_rows = cap_rows(loaded.device, seq_len) if auto_batch else cfg.run.batch_size
    window_tokens = cfg.run.window_tokens or max(1 << 16, 16 * window_rows * seq_len)
    corpus_print = corpus_fingerprint(corpus.files) if corpus.files else {"path": str(corpus.path)}
    outputs: list[_Output] = []
    for c in cfgs:
        metadata = {
            "model": loaded.describe(),
            "config": c.to_dict(),
            "special_tokens": {"bos_id": special.bos_id, "eos_id": special.eos_id},
            "plan": plan.name,
            "schema_version": SCHEMA_VERSION,
        }
        manifest = {"config": _results_config(c, special), "corpus": corpus_print,
                    "model": model_fingerprint(loaded.name, metadata["model"]), "window_tokens": window_tokens}
        documents = DocumentTable(outputs[0].documents.docs if outputs else None)  # one registry, own sums
        outputs.append(_Output(c, metadata, ShardStore(c.out_dir, manifest, c.run.resume, main=dist.main), documents))
    dist.barrier()

    stream = _StopAtError(corpus)
    docs = encode_documents(stream, tokenizer, special, loaded.vocab_size, cfg.corpus.max_tokens)
    work = Prefetch(windows(make_rows(docs, cfg.layout), window_tokens))
    progress = _Progress(cfg, corpus, enabled=not cfg.run.quiet and dist.main)
    runner = _Runner(plan, head, loaded.name, cfg.run.fp32_check)
    n_windows = 0
    error: LossgapError | None = None
    signals = _StopOnSignal()
    score_started = time.perf_counter()
    try:
        for window, rows in enumerate(work):
            n_windows = window + 1
            outputs[0].documents.register(seg.doc for row in rows for seg in row.segments)  # shared by all
            pending = [o for o in outputs if not o.shards.done(window)]
            for o in outputs:
                o.resumed += o not in pending
            if pending and (cfg.model.tp or dist.owns(window)):  # tensor parallel: every rank computes every window
                tables = runner.score_window(rows, outputs[0].documents, [o.k for o in pending])
                if dist.main or not cfg.model.tp:
                    for o, table in zip(pending, tables, strict=True):
                        o.shards.write(window, table)
            progress.update(runner.input_tokens, len(outputs[0].documents.docs))
            if signals.received:
                error = Interrupted(f"stopped by {signals.received} after window {window}: finished windows are kept",
                                    "continue with the same command and --resume")
                break
        error = error or stream.error
    except LossgapError as e:
        error = e
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        error = LossgapError(f"disk full while writing to {cfg.out_dir}", "free space, then rerun with --resume")
    finally:
        signals.restore()
        work.close()
        progress.close()
        restore_attention(loaded.model)
    if dist.any(error is not None) and error is None:
        error = LossgapError("another rank failed; see its message", "fix the cause, then rerun with --resume")
    scoring_seconds = time.perf_counter() - score_started
    input_tokens = runner.input_tokens if cfg.model.tp else dist.sum(runner.input_tokens)
    dist.barrier()
    if not dist.main:
        if error is not None:
            raise error
        return [ScoreResult(o.cfg.out_dir, {}) for o in outputs]

    run_facts = {
        "plan": plan.name,
        "batch_size": plan.batch_size,
        "batch_sizing": sizing.to_dict() if sizing else None,
        "head_check_max_diff": head_diff,
        "loss_kernel": head.kernel,
        "loss_kernel_check": kernel_check,
        "compile": compile_check,
        "mask_probe": probe.to_dict() if probe else None,
        "corpus": {
            "path": str(cfg.corpus.path),
            "records_read": corpus.records_read,
            "bad_records_skipped": len(corpus.bad_records),
            "bad_records": [f"{b.source}: {b.reason}" for b in corpus.bad_records[:50]],
        },
        "input_tokens": input_tokens,
        "tokens_per_second": input_tokens / scoring_seconds if scoring_seconds > 0 else None,
        "data_wait_share": work.wait_seconds / scoring_seconds if scoring_seconds > 0 else None,
        "oom_retries": runner.oom_retries,
        "windows": n_windows,
        "world_size": dist.world,
        "offsets_from_one_pass": [o.k for o in outputs] if len(outputs) > 1 else None,
        "load_seconds": load_seconds,
        "scoring_seconds": scoring_seconds,
    }
    results = [_finish(o, n_windows, error, runner.fp32_check.get(o.k), run_facts, started) for o in outputs]
    if error is not None:
        raise error
    return results


def _check_offset_siblings(cfgs: list[ScoreConfig]) -> None:
    """score_offsets shares rows and forward passes: everything but the offset and the folder must be equal."""

    def rest(c: ScoreConfig) -> dict:
        d = c.to_dict()
        d["layout"].pop("label_offset")
        d["run"].pop("out")
        return d

    if not cfgs or any(rest(c) != rest(cfgs[0]) for c in cfgs):
        raise ValueError("score_offsets: the configurations must differ only in label_offset and out")
    if len({c.layout.label_offset for c in cfgs}) != len(cfgs) or len({c.run.out for c in cfgs}) != len(cfgs):
        raise ValueError("score_offsets: each configuration needs its own label offset and output folder")


def _finish(o: _Output, n_windows: int, error, fp32_check: dict | None, run_facts: dict, started: float):
    """Merge one output's shards in document order into its files and write its summary (rank 0)."""
    complete = error is None
    out_dir = o.cfg.out_dir
    writer = TokenWriter(out_dir, o.metadata)
    for window in range(n_windows):  # document order, whichever rank or earlier run scored the window
        if o.shards.done(window):
            table = o.shards.read(window)
            writer.write(table)
            o.documents.add(*(table.column(c).to_numpy() for c in ("doc_id", "nll", "truncated")))
    tokens_path = writer.close(complete)
    if complete:
        o.shards.remove()
    table = o.documents.to_arrow()
    write_documents(out_dir, table, o.metadata)
    overall, per_domain = summarize_documents(table)
    cfg = o.cfg
    summary = {
        "schema_version": SCHEMA_VERSION,
        "complete": complete,
        "error": None if complete else str(error),
        "tokens_file": tokens_path.name,
        "model": o.metadata["model"],
        "special_tokens": o.metadata["special_tokens"],
        "label_offset": o.k,
        "layout": cfg.layout.layout,
        "mask": cfg.layout.mask,
        "positions": cfg.layout.position_mode,
        "dtype": o.metadata["model"]["dtype"],
        "fp32_check": fp32_check,
        **run_facts,
        **overall,
        "per_domain": per_domain,
        "windows_resumed": o.resumed,
        "elapsed_seconds": time.perf_counter() - started,
        "config": o.metadata["config"],
        "versions": library_versions(),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    return ScoreResult(out_dir, summary)


def float32_nll(plan, head: OutputHead, batch: Batch) -> np.ndarray:
    """The batch scored by the eager model in float32 (bf16 -> fp32 -> bf16 round-trips exactly): the reference for
    reduced-precision and compiled runs."""
    dtype = plan.dtype
    plan.model.to(torch.float32)
    plan.dtype = torch.float32
    try:
        with eager():
            return score_batch(plan, head, batch)
    finally:
        plan.model.to(dtype)
        plan.dtype = dtype


def fp32_deviation(plan, head: OutputHead, batch: Batch, nll: np.ndarray) -> dict:
    """How far the reduced-precision per-token NLL of one batch is from float32."""
    diff = nll.astype(np.float64) - float32_nll(plan, head, batch).astype(np.float64)
    return {"dtype": str(plan.dtype).removeprefix("torch."), "tokens": int(diff.size),
            "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0,
            "mean_abs_diff": float(np.abs(diff).mean()) if diff.size else 0.0,
            "mean_nll_diff": float(diff.mean()) if diff.size else 0.0}


def score_batch(plan, head: OutputHead, batch: Batch) -> np.ndarray:
    """Per-token NLL (fp32, nats) of the batch's scored targets, in the batch's target order."""
    return score_batches(plan, head, [batch])[0]


@torch.inference_mode()
def score_batches(plan, head: OutputHead, batches: list[Batch]) -> list[np.ndarray]:
    """The same rows scoring different targets (label offsets): one forward pass, the targets of each gathered."""
    hidden = plan.hidden_states(batches[0])
    hidden = hidden.reshape(-1, hidden.shape[-1])
    return [head.nll(hidden[b.flat_index.to(hidden.device)], b.targets.to(hidden.device)).cpu().numpy()
            for b in batches]


def _check_finite(nll: np.ndarray, batch, model_name: str) -> None:
    bad = ~np.isfinite(nll)
    if bad.any():
        doc = batch.docs[int(batch.doc_ids[np.argmax(bad)])]
        raise LossgapError(
            f"{model_name} produced a non-finite loss on {doc.source} (document {doc.doc_id})",
            "try --dtype float32; results up to the previous batch are kept",
        )


class Interrupted(LossgapError):
    exit_code = 130


class _Runner:
    """Scores the windows this process owns: batches, OOM back-off, finiteness, document order; one forward pass
    per batch serves every label offset asked for (the plan's rows are laid out for the smallest)."""

    def __init__(self, plan, head: OutputHead, model_name: str, fp32_check: bool):
        self.plan, self.head, self.model_name = plan, head, model_name
        self.want_fp32_check = fp32_check and plan.dtype != torch.float32
        self.fp32_check: dict[int, dict] = {}  # label offset -> deviation of its first batch from float32
        self.input_tokens = 0
        self.oom_retries = 0

    def score_window(self, rows, documents: DocumentTable, offsets: list[int]) -> list:
        """One table per offset, each in document order, whatever order the plan scored in."""
        parts: dict[int, list] = {k: [] for k in offsets}
        for group in self.plan.groups(rows):
            for batches, nlls in self._score_group(group, offsets):
                for k, batch, nll in zip(offsets, batches, nlls, strict=True):
                    _check_finite(nll, batch, self.model_name)
                    if self.want_fp32_check and k not in self.fp32_check and batch.n_targets:
                        self.fp32_check[k] = fp32_deviation(self.plan, self.head, batch, nll)
                    parts[k].append((batch.doc_ids, batch.target_pos, batch.targets.numpy(), nll, batch.truncated))
                self.input_tokens += batches[0].n_input_tokens
        return [_token_table(parts[k], documents) for k in offsets]

    def _score_group(self, group, offsets: list[int]):
        batches = [self.plan.collate(retarget(group, self.plan.k, k), k) for k in offsets]
        try:
            return [(batches, score_batches(self.plan, self.head, batches))]
        except torch.OutOfMemoryError:
            if len(group) == 1:
                raise LossgapError(
                    f"out of memory on a single row of {group[0].length} tokens",
                    "lower --seq-len, --batch-tokens or --loss-chunk-mb",
                ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.oom_retries += 1
        print(f"lossgap: out of memory on a batch of {len(group)} rows; retrying in halves", file=sys.stderr)
        half = len(group) // 2
        return self._score_group(group[:half], offsets) + self._score_group(group[half:], offsets)


def _token_table(parts: list, documents: DocumentTable):
    doc_ids, pos, targets, nll, truncated = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((pos, doc_ids))
    doc_ids, pos, targets, nll, truncated = (a[order] for a in (doc_ids, pos, targets, nll, truncated))
    domains = [documents.docs[d].domain for d in doc_ids.tolist()]
    return token_table(doc_ids, domains, pos, targets, nll, truncated)


class _StopOnSignal:
    """SIGINT/SIGTERM finish the window being scored, then stop cleanly (resumable); a second signal kills."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received:
            self.restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def _results_config(cfg: ScoreConfig, special) -> dict:
    """The settings that decide the numbers, flattened (what --resume must find unchanged)."""
    d = cfg.to_dict()
    for key in ("out", "overwrite", "quiet", "resume", "probe"):
        d["run"].pop(key, None)
    flat = {f"{part}.{k}": v for part, values in d.items() for k, v in values.items()}
    flat["special_tokens"] = [special.bos_id, special.eos_id]
    return flat


class _StopAtError:
    """Ends the document stream at the first corpus error and keeps it, so every document before it is scored."""

    def __init__(self, documents):
        self.documents = documents
        self.error: LossgapError | None = None

    def __iter__(self):
        try:
            yield from self.documents
        except LossgapError as e:
            self.error = e


class _Progress:
    """A tqdm bar on stderr: share of the corpus done (for ETA), with tokens and tokens/s."""

    def __init__(self, cfg: ScoreConfig, corpus: Corpus, enabled: bool):
        self.cfg, self.corpus = cfg, corpus
        self.bar = None
        self.started = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100.0, file=sys.stderr, unit="%", dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
                            desc=f"scoring {Path(cfg.model.name).name}")

    def update(self, input_tokens: int, docs_seen: int) -> None:
        if self.bar is None:
            return
        c = self.cfg.corpus
        limits = [self.corpus.fraction_read if c.sample is None else 0.0]
        if c.max_tokens:
            limits.append(input_tokens / c.max_tokens)
        doc_limit = min(x for x in (c.max_docs, c.sample) if x) if (c.max_docs or c.sample) else None
        if doc_limit:
            limits.append(docs_seen / doc_limit)
        done = min(100.0, 100.0 * max(limits))
        rate = input_tokens / max(1e-9, time.perf_counter() - self.started)
        self.bar.set_postfix_str(f"{input_tokens:,} tok, {rate:,.0f} tok/s", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
