"""Preparing a model to score: load it, check its output head, choose and size the execution plan, compile, probe.

Everything here runs once per run, before the first window, and is recorded in summary.json: a run whose head does
not reproduce the model's logits, whose fused kernel is farther from float64 than the tiled path, whose compiled
layers drift, or whose plan fails the mask probe stops here, before any token is scored.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from ..config import ScoreConfig
from ..data.encode import SpecialTokens, chat_end_of_turn, chat_prefix, resolve_special_tokens
from ..errors import ModelError, UsageError
from .batching import AUTO, BatchSizing, auto_batch_size
from .compiled import check_compiled, compile_layers
from .dist import Dist
from .head import OutputHead
from .model import LoadedModel, load_model, require_room_for_prefix, resolve_seq_len
from .plans import AUTO_FALLBACK, Plan, choose_plan, make_plan
from .probe import ProbeResult, probe_mask, require_probe


@dataclass
class Engine:
    """A model ready to score one configuration, and the start-up checks it passed."""

    loaded: LoadedModel
    tokenizer: object
    seq_len: int
    special: SpecialTokens
    head: OutputHead
    plan: Plan
    head_diff: float
    kernel_check: dict | None
    sizing: BatchSizing | None
    compile_check: dict | None
    probe: ProbeResult | None
    load_seconds: float
    prefix: list[int] | None = None  # --chat-context: the chat template's tokens before each document
    startup: dict[str, float] | None = None  # seconds per start-up step (the fixed cost of a run)
    end_of_turn: int | None = None  # --chat-end-of-turn: what ends each whole document in place of its EOS

    def facts(self) -> dict:
        """The start-up choices and checks, as summary.json records them."""
        return {
            "plan": self.plan.name,
            "batch_size": self.plan.batch_size,
            "batch_sizing": self.sizing.to_dict() if self.sizing else None,
            "head_check_max_diff": self.head_diff,
            "loss_kernel": self.head.kernel,
            "loss_kernel_check": self.kernel_check,
            "compile": self.compile_check,
            "mask_probe": self.probe.to_dict() if self.probe else None,
            "chat_prefix_tokens": None if self.prefix is None else len(self.prefix),
            "chat_end_of_turn_id": self.end_of_turn,
            "startup_seconds": self.startup,
        }


def prepare_engine(cfg: ScoreConfig, dist: Dist, loaded: LoadedModel | None = None, tokenizer=None,
                   started: float | None = None) -> Engine:
    """Load (unless `loaded` is given) and check the model for `cfg`; `tokenizer` replaces the model's own."""
    started = time.perf_counter() if started is None else started
    clock = _Stopwatch(started)
    clock.lap("setup")  # since the run started: the output folder, the corpus's first document
    if loaded is None:
        loaded = load_model(cfg.model, quiet=cfg.run.quiet, local_rank=dist.local_rank)
    tokenizer = tokenizer or loaded.tokenizer
    seq_len = resolve_seq_len(loaded, cfg.layout.seq_len)
    special = resolve_special_tokens(tokenizer, cfg.tokenize, loaded.vocab_size)
    # the template is the model's own, the documents' tokens the given tokenizer's (a comparison's shared one)
    prefix = chat_prefix(loaded.tokenizer, cfg.tokenize.chat_user_turn, loaded.name) if cfg.tokenize.chat_context \
        else None
    if prefix:
        require_room_for_prefix(loaded.name, seq_len, len(prefix), loaded.max_positions)
    end_of_turn = _end_of_turn(cfg, loaded, special)
    clock.lap("load")
    head, head_diff, kernel_check = _checked_head(cfg, loaded)
    clock.lap("head_check")
    plan, sizing = _sized_plan(cfg, loaded, head, seq_len, dist)
    clock.lap("plan_and_batch_size")
    compile_check = None
    if cfg.run.compile:  # after sizing (measured eager: the larger), before the probe (which must see what scores)
        compile_check = {"layer": compile_layers(loaded.model),
                         **check_compiled(plan, head, loaded.vocab_size, loaded.name)}
        clock.lap("compile")
    probe = probe_mask(plan, head, loaded.vocab_size) if cfg.run.probe else None
    if probe is not None:
        require_probe(probe, loaded.name, loaded.attn)
        clock.lap("mask_probe")
    if not cfg.run.quiet and dist.main:
        print(f"lossgap: {loaded.name}: ready in {clock.total():.1f} s ({clock.text()})", file=sys.stderr, flush=True)
    return Engine(loaded, tokenizer, seq_len, special, head, plan, head_diff, kernel_check, sizing, compile_check,
                  probe, clock.total(), prefix, clock.laps, end_of_turn)


def _end_of_turn(cfg: ScoreConfig, loaded: LoadedModel, special: SpecialTokens) -> int | None:
    """--chat-end-of-turn: the model's own end-of-turn token, which takes the place of each whole document's EOS."""
    if not (cfg.tokenize.chat_context and cfg.tokenize.chat_end_of_turn):
        return None
    if special.eos_id is None:
        raise UsageError(f"--chat-end-of-turn puts {loaded.name}'s end-of-turn token in place of each whole "
                         "document's EOS, but the tokenizer defines no EOS: there is none to replace",
                         "name one with --eos-id N, or drop --chat-end-of-turn")
    return chat_end_of_turn(loaded.tokenizer, cfg.tokenize.chat_user_turn, loaded.name)


class _Stopwatch:
    """Seconds per start-up step, from the run's start (a given model's loading took place before: not counted)."""

    def __init__(self, started: float):
        self.last = self.started = started
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return self.last - self.started

    def text(self) -> str:
        return ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in self.laps.items())


def _checked_head(cfg: ScoreConfig, loaded: LoadedModel) -> tuple[OutputHead, float, dict | None]:
    """The output head, checked against the model's own logits, and its fused kernel against float64."""
    head = OutputHead(loaded.model, cfg.run.loss_chunk_mb, cfg.run.loss_kernel)
    head_diff = head.verify(loaded.vocab_size)
    kernel_check = head.check_kernel(loaded.vocab_size)
    if kernel_check is not None and not kernel_check["passed"] and cfg.run.loss_kernel == "cce":
        raise ModelError(f"--loss-kernel cce: on {loaded.name} its per-token loss is "
                         f"{kernel_check['max_abs_diff_vs_float64']:.3g} from float64, the tiled path's "
                         f"{kernel_check['tiled_max_abs_diff_vs_float64']:.3g}", "use --loss-kernel tiled")
    return head, head_diff, kernel_check


def _sized_plan(cfg: ScoreConfig, loaded: LoadedModel, head: OutputHead, seq_len: int,
                dist: Dist) -> tuple[Plan, BatchSizing | None]:
    """The execution plan for this configuration, with its batch size (measured when --batch-size auto)."""
    positions = cfg.layout.position_mode
    name = choose_plan(cfg.run.plan, cfg.layout.mask, positions, loaded.device, cfg.layout.layout)
    auto_batch = cfg.run.batch_size == AUTO
    args = (loaded.model, cfg.layout.mask, positions, cfg.layout.label_offset, 1 if auto_batch else cfg.run.batch_size,
            cfg.run.batch_tokens, cfg.run.mask_heads)
    try:
        plan = make_plan(name, *args)
    except UsageError:
        if cfg.run.plan != "auto" or name not in AUTO_FALLBACK:
            raise
        plan = make_plan(AUTO_FALLBACK[name], *args)  # e.g. varlen refuses soft-capped attention: docs serves it
    sizing = auto_batch_size(plan, head, seq_len, loaded.vocab_size) if auto_batch else None
    if sizing is not None:  # tensor parallel ranks run the same batches: all take the smallest
        plan.batch_size = int(dist.min(sizing.rows)) if cfg.model.tp else sizing.rows
    return plan, sizing
