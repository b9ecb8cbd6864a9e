"""Every file and folder name of a run and of a comparison, and the checked readers of what they store.

A run (`lossgap score`, or one model under one configuration of a comparison) is a folder:

    tokens.parquet   documents.parquet   summary.json
    tokens.parquet.partial                 (a run that stopped early: the tokens scored so far)
    shards/manifest.json, shards/window-NNNNNNNN.parquet   (until the run finishes: the unit of resume)
    lossgap-error.log                      (a bug's traceback, saved for the report)
    <name>.<pid>.<random>.tmp              (a file being written; files.py renames it to <name> when complete)

A comparison (`lossgap compare`) is a folder:

    compare.json  results.json  report.md  report.html  (+ the report's CSV and PNG files)
    runs/<configuration>/<model>/          a run of each model under each configuration
    runs/<configuration>-chat/<model>/     the chat-formatted run (--chat-context)
    pairs/<other>.parquet                  the paired pass of the baseline and another model
    pairs/.<other>/                        its shards until it finishes
    pairs/<other>.layers.json, .layers.parquet   --layers: the layer attribution of the pair (run/layers.py)
    pairs/<other>.temperature.json         each model's fitted temperature on a sample of the pass's rows, per
                                           document the NLL sums at T = 1 and at the fitted T
    vocab/<model>.parquet                  each model's token bytes and classes

compare.json records the runs, pairs and vocabularies by their paths relative to the comparison folder. Every read of
a stored file goes through a reader here, so that a missing, truncated or corrupt file is one LossgapError naming
the file and what to do, never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import LossgapError
from .files import PARTIAL_SUFFIX

TOKENS = "tokens.parquet"
DOCUMENTS = "documents.parquet"
SUMMARY = "summary.json"
SHARDS = "shards"
SHARD_MANIFEST = "manifest.json"
ERROR_LOG = "lossgap-error.log"
RUN_FILES = (TOKENS, DOCUMENTS, SUMMARY, TOKENS + PARTIAL_SUFFIX, SHARDS)  # what marks a folder as holding a run

COMPARE_MANIFEST = "compare.json"
RESULTS = "results.json"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"
RUNS = "runs"
PAIRS = "pairs"
VOCAB = "vocab"
CHAT_SUFFIX = "-chat"  # the chat-formatted run of a configuration
COMPARISON_FILES = (COMPARE_MANIFEST, RESULTS, REPORT_MARKDOWN, REPORT_HTML)

RERUN_COMPARE = "rerun compare"


def read_parquet(path: Path, columns: list[str] | None = None, fix: str = RERUN_COMPARE) -> pa.Table:
    """A stored Parquet file (only `columns`, if given), or a LossgapError naming it."""
    path = Path(path)
    if not path.is_file():
        raise LossgapError(f"{path}: missing", f"the stored files are incomplete; {fix}")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # pyarrow raises several types for damaged files
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise LossgapError(f"{path}: not a readable Parquet file ({first})", fix) from None


def read_json(path: Path, fix: str = RERUN_COMPARE) -> dict:
    """A stored JSON object, or a LossgapError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LossgapError(f"{path}: missing", f"the stored files are incomplete; {fix}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LossgapError(f"{path}: corrupt ({getattr(e, 'msg', None) or e})", fix) from None
    if not isinstance(value, dict):
        raise LossgapError(f"{path}: corrupt (expected a JSON object, got {type(value).__name__})", fix)
    return value


@dataclass(frozen=True)
class RunFiles:
    """The files of one run in `folder`; `fix` is what a reader tells the user when one is missing or damaged."""

    folder: Path
    fix: str = RERUN_COMPARE

    @property
    def tokens(self) -> Path:
        return self.folder / TOKENS

    @property
    def partial_tokens(self) -> Path:
        return self.folder / (TOKENS + PARTIAL_SUFFIX)

    @property
    def documents(self) -> Path:
        return self.folder / DOCUMENTS

    @property
    def summary(self) -> Path:
        return self.folder / SUMMARY

    @property
    def shards(self) -> Path:
        return self.folder / SHARDS

    @property
    def error_log(self) -> Path:
        return self.folder / ERROR_LOG

    @property
    def shard_manifest(self) -> Path:
        return self.shards / SHARD_MANIFEST

    def shard(self, window: int) -> Path:
        return self.shards / f"window-{window:08d}.parquet"

    def shard_files(self) -> list[Path]:
        return sorted(self.shards.glob("window-*.parquet"))

    def owned(self) -> list[Path]:
        """What lossgap writes, replaces or deletes in the folder: never through a symbolic link (files.py)."""
        return [self.folder / name for name in RUN_FILES] + [self.error_log]

    def existing(self) -> list[str]:
        """The names of the run files present: a folder holding any is a run."""
        return [name for name in RUN_FILES if (self.folder / name).exists()] if self.folder.is_dir() else []

    def read_tokens(self, columns: list[str] | None = None) -> pa.Table:
        return read_parquet(self.tokens, columns, self.fix)

    def read_documents(self) -> pa.Table:
        return read_parquet(self.documents, fix=self.fix)

    def read_summary(self) -> dict:
        return read_json(self.summary, self.fix)


@dataclass(frozen=True)
class ComparisonFolder:
    """The files of one comparison under `root`."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / COMPARE_MANIFEST

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def report_markdown(self) -> Path:
        return self.root / REPORT_MARKDOWN

    @property
    def report_html(self) -> Path:
        return self.root / REPORT_HTML

    @property
    def runs(self) -> Path:
        return self.root / RUNS

    def run(self, configuration: str, model: str, chat: bool = False, turn: int = 0) -> RunFiles:
        """Where a model's run of a configuration goes (chat: its chat-formatted run after user turn number `turn`;
        the first keeps the suffix alone)."""
        suffix = (CHAT_SUFFIX + (f"-{turn + 1}" if turn else "")) if chat else ""
        return RunFiles(self.runs / (configuration + suffix) / model)

    def pairs(self, other: str) -> Path:
        return self.root / PAIRS / f"{other}.parquet"

    def pairs_work(self, other: str) -> Path:
        """Where the paired pass keeps its shards until they are merged (the unit of resume)."""
        return self.root / PAIRS / f".{other}"

    def layers(self, other: str) -> Path:
        """--layers: what the layer attribution of the pair measured, besides per-document sums."""
        return self.root / PAIRS / f"{other}.layers.json"

    def layer_sums(self, other: str) -> Path:
        """--layers: per document of the sample, the scored tokens and each hybrid's summed NLL."""
        return self.root / PAIRS / f"{other}.layers.parquet"

    def temperature(self, other: str) -> Path:
        """The temperature fit of the baseline and another model on a sample of the paired pass's rows."""
        return self.root / PAIRS / f"{other}.temperature.json"

    def vocab(self, model: str) -> Path:
        return self.root / VOCAB / f"{model}.parquet"

    def relative(self, path: Path | RunFiles) -> str:
        """How compare.json records a path: relative to the comparison folder."""
        return str(Path(path.folder if isinstance(path, RunFiles) else path).relative_to(self.root))

    def owned(self) -> list[Path]:
        """What lossgap writes, replaces or deletes in the comparison folder besides the report's CSV and PNG files
        (written under temporary names, so a link there is replaced, not followed): never through a link."""
        return [self.root / name for name in (*COMPARISON_FILES, RUNS, PAIRS, VOCAB, ERROR_LOG)]

    def existing(self) -> list[str]:
        """The comparison's files present (runs/ included): a folder holding any is a comparison."""
        found = [name for name in COMPARISON_FILES if (self.root / name).exists()]
        return found + ([f"{RUNS}/"] if self.runs.exists() else [])

    def read_manifest(self) -> dict:
        if not self.manifest.is_file():
            raise LossgapError(f"{self.root}: no {COMPARE_MANIFEST} here",
                               "point `lossgap report` at a folder `lossgap compare` wrote")
        return read_json(self.manifest, "run `lossgap compare` again")

    def stored_run(self, relative: str) -> RunFiles:
        """A run recorded in compare.json."""
        return RunFiles(self.root / relative)

    def read_stored_json(self, relative: str) -> dict:
        """A JSON file recorded in compare.json (the temperature fits)."""
        return read_json(self.root / relative)

    def read_stored(self, relative: str, columns: list[str] | None = None) -> pa.Table:
        """A Parquet file recorded in compare.json (pairs, vocabularies)."""
        return read_parquet(self.root / relative, columns)
