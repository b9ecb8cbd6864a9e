"""What a comparison will compute for the explanation, decided (and refused where it cannot be done) before any model
loads and fixed from then on; and, apart from it, the record of what was then stored. compare.json's `explanation`
is the two together (formats/schema.py, ExplanationManifest).

The paired pass needs identical tokenization, a next-token configuration, output vocabularies of the same size and
room for two models at once; `--chat-context` needs each other model's chat template, and `--chat-end-of-turn` an
end-of-turn token in it and an EOS for that token to replace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType

from ..config import DEFAULT_SEQ_LEN, CompareConfig, ModelConfig
from ..data.encode import chat_end_of_turn, chat_prefix, resolve_special_tokens
from ..engine.memory import model_shape, require_room_for_pair
from ..engine.model import load_config, max_positions, require_room_for_prefix
from ..errors import UsageError
from ..formats.schema import TOKENS, ExplanationManifest
from ..matrix import Configuration

UNDEFINED_FOR_BYTES = ("the tokenizers differ on this corpus, so the two models' distributions are over different "
                       "tokens: KL, top-1 agreement and calibration against the baseline are undefined; the difference "
                       "is attributed by byte class in bits per byte")
NO_NEXT_TOKEN = "no next-token configuration was scored"


@dataclass(frozen=True)
class ExplanationPlan:
    enabled: bool  # an explanation at all (--no-explain and a single model: none)
    configuration: str  # the key of the configuration the paired pass and the chat-formatted runs use
    paired: tuple[str, ...]  # the other models the paired pass runs with, in order
    skipped: MappingProxyType  # other model -> why it has no paired pass (None: it has one)
    chat_user_turn: str | None  # --chat-context: the user turn before each document (None: no chat runs)
    memory: MappingProxyType | None  # engine/memory.py's figures for the largest pair
    chat_user_turns: tuple[str, ...] = ()  # every sampled user turn, chat_user_turn first: one chat run each
    end_of_turn: MappingProxyType | None = None  # --chat-end-of-turn: other model -> the id ending its documents
    layers: tuple[str, ...] = ()  # --layers: the other models whose layer attribution follows their paired pass

    @property
    def chat(self) -> bool:
        return self.chat_user_turn is not None

    def manifest(self, record: ExplanationRecord) -> ExplanationManifest:
        """compare.json's `explanation`: this plan and what the comparison stored."""
        return {"enabled": self.enabled, "configuration": self.configuration, "pairs": dict(record.pairs),
                "skipped": dict(self.skipped), "chat_runs": dict(record.chat_runs),
                "chat_user_turn": self.chat_user_turn, "chat_user_turns": list(self.chat_user_turns),
                "chat_runs_by_turn": dict(record.chat_runs_by_turn),
                "chat_end_of_turn": self.end_of_turn is not None,
                "chat_end_of_turn_ids": {} if self.end_of_turn is None else dict(self.end_of_turn),
                "temperature": dict(record.temperature),
                "memory": None if self.memory is None else dict(self.memory),
                "vocab": dict(record.vocab), "layers": dict(record.layers)}


@dataclass
class ExplanationRecord:
    """What the comparison stored for the explanation, by paths relative to its folder."""

    pairs: dict[str, str] = field(default_factory=dict)  # other model -> pairs/<other>.parquet
    chat_runs: dict[str, str] = field(default_factory=dict)  # other model -> its chat-formatted run (first turn)
    chat_runs_by_turn: dict[str, list[str]] = field(default_factory=dict)  # other model -> one run per user turn
    vocab: dict[str, str] = field(default_factory=dict)  # model -> vocab/<model>.parquet
    layers: dict[str, str] = field(default_factory=dict)  # other model -> pairs/<other>.layers.json (--layers)
    temperature: dict[str, str] = field(default_factory=dict)  # other model -> pairs/<other>.temperature.json


def plan_explanation(cfg: CompareConfig, models: dict[str, ModelConfig], tokenizers: dict, mode: str,
                     main: Configuration) -> ExplanationPlan:
    """The explanation of a comparison of `models` (baseline first), checked before any model loads."""
    names = list(models)
    turns = cfg.chat_user_turns() if cfg.tokenize.chat_context else ()
    turn = turns[0] if turns else None
    for name in names[1:] if turns else []:
        # refused here, before any model loads: a model without a template, rows the model's positions cannot hold
        longest = max(len(chat_prefix(tokenizers[name], each, name)) for each in turns)
        positions = max_positions(load_config(models[name]))
        if positions is not None:
            require_room_for_prefix(name, cfg.layout.seq_len or min(DEFAULT_SEQ_LEN, positions), longest, positions)
    end_of_turn = _end_of_turn_ids(cfg, names, tokenizers, mode, turn) if turns else None
    enabled = cfg.explain and len(names) > 1
    reason = UNDEFINED_FOR_BYTES if mode != TOKENS else NO_NEXT_TOKEN if main.label_offset != 1 else None
    skipped: dict[str, str | None] = {}
    memory = None
    if enabled and reason is not None:
        skipped = dict.fromkeys(names[1:], reason)
    elif enabled:
        shapes = {name: model_shape(m) for name, m in models.items()}
        base = shapes[names[0]]
        for name in names[1:]:
            if shapes[name].vocab != base.vocab:
                skipped[name] = (f"the output vocabularies differ in size ({base.vocab} vs {shapes[name].vocab}): the "
                                 "distributions cannot be compared entry by entry")
        paired = {name: m for name, m in models.items() if name not in skipped}
        if len(paired) > 1:
            memory = MappingProxyType(require_room_for_pair(paired, names[0], shapes, cfg.layers))
    if cfg.layers:
        require_fine_tunes(cfg, models, names, skipped, enabled)
    paired_names = tuple(n for n in names[1:] if enabled and n not in skipped)
    layers = paired_names if cfg.layers else ()
    return ExplanationPlan(enabled, main.key, paired_names, MappingProxyType(skipped), turn, memory, turns,
                           end_of_turn, layers)


def require_fine_tunes(cfg: CompareConfig, models: dict[str, ModelConfig], names: list[str], skipped: dict,
                       enabled: bool) -> None:
    """--layers: refuse, before any model loads, a pair whose architectures or parameter shapes differ (no hybrid of
    the two exists), that has no paired pass, or that runs in several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or cfg.model.tp:
        raise UsageError("--layers runs in one process: its hybrids are built inside one copy of the baseline",
                         "run it without torchrun, or drop --layers")
    if not enabled:
        raise UsageError("--layers needs the paired pass, which " + ("--no-explain turns off" if not cfg.explain
                         else "a comparison of one model does not run"), "drop --layers")
    shapes = {name: model_shape(models[name]) for name in names}
    base = shapes[names[0]]
    for name in names[1:]:
        if name in skipped:
            raise UsageError(f"--layers: {name} has no paired pass with {names[0]} ({skipped[name]})",
                             "drop --layers")
        if (shapes[name].architecture, shapes[name].parameters) != (base.architecture, base.parameters):
            differ = sorted(set(base.parameters) ^ set(shapes[name].parameters))[:2]
            what = (f"{base.architecture} against {shapes[name].architecture}"
                    if shapes[name].architecture != base.architecture else f"parameters differ: {differ}")
            raise UsageError(f"--layers: {names[0]} and {name} are not one architecture with the same shapes "
                             f"({what}), so no hybrid of the two can be built",
                             "drop --layers, or compare a model with its own fine-tune")


def _end_of_turn_ids(cfg: CompareConfig, names: list[str], tokenizers: dict, mode: str,
                     turn: str) -> MappingProxyType | None:
    """--chat-end-of-turn: each other model's end-of-turn token, and an EOS of the documents' tokenizer (the
    baseline's in a token-level comparison) for it to replace; refused before any model loads."""
    if not cfg.tokenize.chat_end_of_turn:
        return None
    ids = {}
    for name in names[1:]:
        documents = tokenizers[names[0]] if mode == TOKENS else tokenizers[name]
        if resolve_special_tokens(documents, cfg.tokenize).eos_id is None:
            raise UsageError(f"--chat-end-of-turn puts {name}'s end-of-turn token in place of each whole document's "
                             "EOS, but the documents' tokenizer defines no EOS: there is none to replace",
                             "name one with --eos-id N, or drop --chat-end-of-turn")
        ids[name] = chat_end_of_turn(tokenizers[name], turn, name)
    return MappingProxyType(ids)

