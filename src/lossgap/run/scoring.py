"""Scoring one model on one corpus, from the file on disk to per-token losses, documents and a summary.

The steps, each a function below: prepare the engine (engine/prepare.py: load, check, plan, probe), open the outputs
(one folder, shard store and document sums per label offset), run the windows (the runner scores the windows this
process owns, written as shards), and finish (merge the shards in document order, write the files and the summary).
"""

from __future__ import annotations

import errno
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ..analysis.stats import summarize_documents
from ..config import ScoreConfig
from ..data.corpus import Corpus, require_documents
from ..data.encode import encode_documents
from ..data.layout import make_rows, windows
from ..engine.batching import AUTO, cap_rows
from ..engine.dist import Dist, init_distributed
from ..engine.model import LoadedModel
from ..engine.prepare import Engine, prepare_engine
from ..errors import LossgapError
from ..formats.columns import TOKEN_COLUMNS, TOKEN_SCHEMA
from ..formats.files import write_json
from ..formats.paths import RunFiles
from ..formats.schema import SCHEMA_VERSION
from ..version import library_versions
from .fingerprints import Hashing, corpus_fingerprint, model_fingerprint, prehash
from .interrupts import Interrupted, StopAtError, StopOnSignal
from .lock import OutLocks
from .prefetch import Prefetch
from .progress import Progress
from .runner import WindowRunner
from .shards import RUN_FIELD, ShardStore, manifest_hash
from .store import DocumentSums, TokenWriter, prepare_out_dir, require_targets, write_documents


@dataclass
class ScoreResult:
    out_dir: Path
    summary: dict  # summary.json ({} on a torchrun rank other than 0)

    @property
    def files(self) -> RunFiles:
        """The run's files (tokens.parquet, documents.parquet, summary.json)."""
        return RunFiles(self.out_dir)


def score(cfg: ScoreConfig, loaded: LoadedModel | None = None, tokenizer=None) -> ScoreResult:
    """Score every document of the corpus with one model; write tokens.parquet, documents.parquet, summary.json.

    `loaded` reuses a model already in memory (a comparison scores several configurations per model);
    `tokenizer` replaces the model's own (a comparison tokenizes every model's input with one tokenizer).
    Under torchrun each rank scores its share of the windows and rank 0 merges; results are written per window,
    so `--resume` continues an interrupted run.
    """
    return score_offsets([cfg], loaded, tokenizer)[0]


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
    require_documents(corpus)  # an empty selection fails before the model loads
    with OutLocks([c.out_dir for c in cfgs] if dist.main else []):
        if dist.main:
            for c in cfgs:
                prepare_out_dir(c.out_dir, c.run.overwrite or c.run.resume)
        dist.barrier()
        hashing = prehash(corpus.files, [] if loaded is not None else [cfg.model.name])
        engine = prepare_engine(cfg, dist, loaded, tokenizer, started)
        for c in cfgs:
            c.layout.seq_len = engine.seq_len
            c.layout.validate()
        outputs = open_outputs(cfgs, engine, corpus, dist, hashing)
        if all(o.finished is not None for o in outputs):
            if dist.main and not cfg.run.quiet:
                print(f"lossgap: --resume: {', '.join(str(o.cfg.out_dir) for o in outputs)} already holds the "
                      "finished run of these inputs; nothing is scored again", file=sys.stderr, flush=True)
            return [ScoreResult(o.cfg.out_dir, o.finished if dist.main else {}) for o in outputs]
        pending = [o for o in outputs if o.finished is None]  # --resume keeps the offsets it had finished
        done = run_windows(cfg, engine, corpus, pending, dist)
        if not dist.main:
            if done.error is not None:
                raise done.error
            return [ScoreResult(o.cfg.out_dir, {}) for o in outputs]
        facts = {**engine.facts(), **done.facts(cfg, corpus, outputs, engine.load_seconds)}
        results = [finish(o, done, facts, started) if o.finished is None else ScoreResult(o.cfg.out_dir, o.finished)
                   for o in outputs]
    if done.error is not None:
        raise done.error
    return results


@dataclass
class Output:
    """One label offset's results: its folder, shards, documents and metadata."""

    cfg: ScoreConfig
    metadata: dict
    shards: ShardStore
    documents: DocumentSums
    window_tokens: int  # the unit of resume: every rank and every resumed run cuts the same windows
    resumed: int = 0
    finished: dict | None = None  # --resume found this run complete, with the same inputs: its summary
    # a run the paired pass writes as it goes: each tokens.parquet column from the pass's column of this name, and the
    # key of its float32 check among the pass's (run/paired.py); None: the runner's table as it is, checked under k
    renamed: dict[str, str] | None = None
    check_key: object = None

    @property
    def k(self) -> int:
        return self.cfg.layout.label_offset

    def view(self, table: pa.Table) -> pa.Table:
        """This output's shard from the runner's table of its label offset."""
        if self.renamed is None:
            return table
        return pa.table([table.column(self.renamed.get(c.name, c.name)) for c in TOKEN_COLUMNS], schema=TOKEN_SCHEMA)

    @property
    def fp32_key(self) -> object:
        return self.k if self.check_key is None else self.check_key


def window_size(cfg: ScoreConfig, engine: Engine) -> int:
    """Tokens per window, the unit of resume. It must not depend on a measured batch size: every rank and every
    resumed run cuts the same windows."""
    window_rows = cap_rows(engine.loaded.device, engine.seq_len) if cfg.run.batch_size == AUTO else cfg.run.batch_size
    return cfg.run.window_tokens or max(1 << 16, 16 * window_rows * engine.seq_len)


def open_outputs(cfgs: list[ScoreConfig], engine: Engine, corpus: Corpus, dist: Dist,
                 hashing: Hashing | None = None) -> list[Output]:
    """A shard store (checked against an interrupted run's manifest with --resume) and a document table per offset;
    the tables share one document registry."""
    window_tokens = window_size(cfgs[0], engine)
    if hashing is not None:
        hashing.wait()
    corpus_print = corpus_fingerprint(corpus.files, str(corpus.path))
    outputs: list[Output] = []
    for c in cfgs:
        outputs.append(run_output(c, engine, corpus_print, window_tokens, dist, outputs[0] if outputs else None))
    dist.barrier()
    return outputs


def run_output(c: ScoreConfig, engine: Engine, corpus_print: dict, window_tokens: int, dist: Dist,
               first: Output | None = None) -> Output:
    """One run's output: its metadata, its shard store (checked against an interrupted run's manifest with --resume)
    and its document table, which shares `first`'s document registry. The paired pass opens the runs it writes with
    this too, so their files and fingerprints are those a separate run writes."""
    metadata = {
        "model": engine.loaded.describe(),
        "config": c.to_dict(),
        "special_tokens": {"bos_id": engine.special.bos_id, "eos_id": engine.special.eos_id},
        "plan": engine.plan.name,
        "schema_version": SCHEMA_VERSION,
    }
    manifest = {"config": resume_config(c, engine.special), "corpus": corpus_print,
                "model": model_fingerprint(engine.loaded.name, metadata["model"], engine.loaded.revision),
                "window_tokens": window_tokens}
    documents = DocumentSums(first.documents.docs if first is not None else None)  # one registry, own sums
    finished = finished_run(RunFiles(c.out_dir), manifest) if c.run.resume else None
    shards = ShardStore(RunFiles(c.out_dir), manifest, c.run.resume, main=dist.main and finished is None)
    return Output(c, metadata, shards, documents, window_tokens, finished=finished)


def finished_run(files: RunFiles, manifest: dict) -> dict | None:
    """The summary of a complete run in `files` made from the same inputs (the same manifest hash), or None: a
    resumed comparison keeps the runs it had finished instead of scoring them again."""
    try:
        summary = files.read_summary() if files.summary.is_file() and files.tokens.is_file() else None
    except LossgapError:
        return None
    if isinstance(summary, dict) and summary.get("complete") and summary.get(RUN_FIELD) == manifest_hash(manifest):
        return summary
    return None


@dataclass
class Pass:
    """What a pass over the windows did: how far it got, why it stopped, and its throughput figures."""

    runner: WindowRunner
    n_windows: int = 0
    error: LossgapError | None = None
    input_tokens: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    world: int = 1
    fp32_check: dict = field(default_factory=dict)

    def facts(self, cfg: ScoreConfig, corpus: Corpus, outputs: list[Output], load_seconds: float) -> dict:
        return {
            "corpus": {
                "path": str(cfg.corpus.path),
                "records_read": corpus.records_read,
                "bad_records_skipped": len(corpus.bad_records),
                "bad_records": [f"{b.source}: {b.reason}" for b in corpus.bad_records[:50]],
            },
            "max_tokens": corpus.token_cap.facts(),  # --max-tokens as applied: data/corpus.py TokenCap
            "input_tokens": self.input_tokens,
            "tokens_per_second": self.input_tokens / self.seconds if self.seconds > 0 else None,
            "data_wait_share": self.wait_seconds / self.seconds if self.seconds > 0 else None,
            "oom_retries": self.runner.oom_retries,
            "windows": self.n_windows,
            "world_size": self.world,
            "offsets_from_one_pass": [o.k for o in outputs] if len(outputs) > 1 else None,
            "load_seconds": load_seconds,
            "scoring_seconds": self.seconds,
        }


def run_windows(cfg: ScoreConfig, engine: Engine, corpus: Corpus, outputs: list[Output], dist: Dist,
                runner: WindowRunner | None = None) -> Pass:
    """Score every window this process owns and has not finished, writing each as a shard. Stops cleanly, keeping
    finished windows, at a corpus error, a signal, a full disk or another rank's failure. `runner` scores a window
    (default: the engine's model alone; the paired pass brings its own)."""
    stream = StopAtError(corpus)
    docs = encode_documents(stream, engine.tokenizer, engine.special, engine.loaded.vocab_size, cfg.corpus.max_tokens,
                            prefix=engine.prefix, end_of_turn=engine.end_of_turn)
    work = Prefetch(windows(make_rows(docs, cfg.layout), outputs[0].window_tokens))
    progress = Progress(cfg, corpus, enabled=not cfg.run.quiet and dist.main)
    runner = runner or WindowRunner(engine.plan, engine.head, engine.loaded.name, cfg.run.fp32_check)
    done = Pass(runner, world=dist.world)
    signals = StopOnSignal()
    started = time.perf_counter()
    try:
        with runner.attention():
            for window, rows in enumerate(work):
                done.n_windows = window + 1
                _score_window(window, rows, runner, outputs, cfg.model.tp, dist)
                progress.update(runner.input_tokens, len(outputs[0].documents.docs))
                if signals.received:
                    done.error = Interrupted(f"stopped by {signals.received} after window {window}: finished windows "
                                             "are kept", "continue with the same command and --resume")
                    break
        done.error = done.error or stream.error
    except LossgapError as e:
        done.error = e
    except OSError as e:
        done.error = write_fault(e, cfg.out_dir)
        if done.error is None:
            raise
    finally:
        signals.restore()
        work.close()
        progress.close()
    if dist.any(done.error is not None) and done.error is None:
        done.error = LossgapError("another rank failed; see its message", "fix the cause, then rerun with --resume")
    done.seconds = time.perf_counter() - started
    done.wait_seconds = work.wait_seconds
    done.input_tokens = done.runner.input_tokens if cfg.model.tp else dist.sum(done.runner.input_tokens)
    done.fp32_check = done.runner.fp32_check
    dist.barrier()
    return done


def _score_window(window: int, rows, runner: WindowRunner, outputs: list[Output], tp: bool, dist: Dist) -> None:
    """One window: register its documents, score the offsets not finished yet (if this rank owns it), write shards."""
    outputs[0].documents.register(seg.doc for row in rows for seg in row.segments)  # shared by all
    pending = [o for o in outputs if not o.shards.done(window)]
    for o in outputs:
        o.resumed += o not in pending
    if pending and (tp or dist.owns(window)):  # tensor parallel: every rank computes every window
        offsets = list(dict.fromkeys(o.k for o in pending))  # outputs may share an offset (the paired pass's runs)
        tables = dict(zip(offsets, runner.score_window(rows, outputs[0].documents, offsets), strict=True))
        if dist.main or not tp:
            for o in pending:
                o.shards.write(window, o.view(tables[o.k]))


def finish(o: Output, done: Pass, facts: dict, started: float) -> ScoreResult:
    """Merge one output's shards in document order into its files and write its summary (rank 0). The shards go
    only once every file is written: a full disk or a removed --out while finishing is the run's own message
    (write_fault), and --resume finishes the run from the shards."""
    files = RunFiles(o.cfg.out_dir)
    try:
        result = _write_results(o, done, facts, started, files)
    except OSError as e:
        fault = write_fault(e, o.cfg.out_dir)
        if fault is None:
            raise
        raise fault from None
    if result.summary["complete"]:
        o.shards.remove()
    return result


def _write_results(o: Output, done: Pass, facts: dict, started: float, files: RunFiles) -> ScoreResult:
    complete = done.error is None
    with TokenWriter(files, o.metadata) as writer:
        for window in range(done.n_windows):  # document order, whichever rank or earlier run scored the window
            if o.shards.done(window):
                table = o.shards.read(window)
                writer.write(table)
                o.documents.add(table)
            elif complete:  # another rank's shard vanished or was damaged after it was written: never a gap
                raise LossgapError(f"{o.shards.path(window)} is missing or damaged after window {window} was scored",
                                   "rerun the same command with --resume: that window is scored again")
        tokens_path = writer.close(complete)
    table = o.documents.to_arrow()
    try:
        require_targets(table, o.k, o.cfg.corpus.path, tokens_path if complete else None)
    except LossgapError:
        o.shards.remove()  # nothing to score: nothing to resume either
        raise
    write_documents(files, table, o.metadata)
    overall, per_domain = summarize_documents(table)
    cfg = o.cfg
    summary = {
        "schema_version": SCHEMA_VERSION,
        "complete": complete,
        "error": None if complete else str(done.error),
        "tokens_file": tokens_path.name,
        "model": o.metadata["model"],
        "special_tokens": o.metadata["special_tokens"],
        "label_offset": o.k,
        "layout": cfg.layout.layout,
        "mask": cfg.layout.mask,
        "positions": cfg.layout.position_mode,
        "dtype": o.metadata["model"]["dtype"],
        "fp32_check": done.fp32_check.get(o.fp32_key),
        **facts,
        **overall,
        "per_domain": per_domain,
        "windows_resumed": o.resumed,
        RUN_FIELD: o.shards.run,
        "elapsed_seconds": time.perf_counter() - started,
        "config": o.metadata["config"],
        "versions": library_versions(),
    }
    write_json(files.summary, summary)
    return ScoreResult(files.folder, summary)


def write_fault(e: OSError, out_dir: Path) -> LossgapError | None:
    """What an OSError while scoring or finishing a run means to the user, or None when it is not a fault of the disk
    or the folder (the caller re-raises it). The finished shards stay on disk either way."""
    out_dir = Path(out_dir)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "" if e.errno == errno.ENOSPC else " (the disk quota is exhausted)"
        return LossgapError(f"disk full while writing to {out_dir}{why}", "free space, then rerun with --resume")
    gone = next((p for p in (out_dir, RunFiles(out_dir).shards) if not p.is_dir()), None)
    if isinstance(e, FileNotFoundError) and gone is not None:  # pyarrow's may carry no errno
        return LossgapError(f"{gone} was removed while the run was writing to it",
                            "run the command again (with --overwrite if --out still holds part of the run)")
    return None


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


def resume_config(cfg: ScoreConfig, special) -> dict:
    """The settings that decide the numbers, flattened (what --resume must find unchanged)."""
    d = cfg.to_dict()
    for key in ("out", "overwrite", "quiet", "resume", "probe"):
        d["run"].pop(key, None)
    flat = {f"{part}.{k}": v for part, values in d.items() for k, v in values.items()}
    flat["special_tokens"] = [special.bos_id, special.eos_id]
    return flat
