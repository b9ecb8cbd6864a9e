"""Typed configuration: one dataclass per step of the data flow, grouped by ScoreConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import UsageError

LAYOUTS = ("packed", "single")
MASKS = ("block", "causal")
POSITIONS = ("restart", "continuous")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
ATTNS = ("auto", "sdpa", "eager", "flex")
ON_BAD_LINE = ("fail", "skip")
PLANS = ("auto", "dense", "docs", "nomask", "flex", "varlen")  # execution plans: plans.py
LOSS_KERNELS = ("auto", "tiled", "cce")  # loss from hidden states: head.py
MATRICES = ("seed", "single")  # which configurations `lossgap compare` runs: compare.py
DEFAULT_SEQ_LEN = 2048


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

    path: str
    text_field: str = "text"
    domain_field: str = "meta.pile_set_name"
    split: str | None = None
    skip: int = 0
    sample: int | None = None
    seed: int = 0
    max_docs: int | None = None
    max_tokens: int | None = None
    on_bad_line: str = "fail"

    def validate(self) -> None:
        _check_positive("skip", self.skip, allow_zero=True)
        _check_positive("sample", self.sample)
        _check_positive("max-docs", self.max_docs)
        _check_positive("max-tokens", self.max_tokens)
        _check_choice("on-bad-line", self.on_bad_line, ON_BAD_LINE)


@dataclass
class TokenizeConfig:
    """BOS/EOS policy. add_bos=None prepends BOS when the tokenizer defines one."""

    add_bos: bool | None = None
    add_eos: bool = True
    bos_id: int | None = None
    eos_id: int | None = None


@dataclass
class LayoutConfig:
    """How documents become rows, what each position may attend to, and what it predicts."""

    layout: str = "packed"
    seq_len: int | None = None  # None: the model's context length, at most DEFAULT_SEQ_LEN
    stride: int | None = None
    mask: str = "block"
    positions: str | None = None  # None: restart for the block mask, continuous for the causal one
    label_offset: int = 1

    def validate(self) -> None:
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("mask", self.mask, MASKS)
        if self.positions is not None:
            _check_choice("positions", self.positions, POSITIONS)
        _check_positive("seq-len", self.seq_len)
        _check_choice("label-offset", self.label_offset, (1, 2))
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

    name: str
    gguf_file: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    attn: str = "auto"
    trust_remote_code: bool = False
    device_map: str | None = None  # e.g. "auto": accelerate spreads a model too large for one GPU over several
    tp: bool = False  # tensor parallel over the torchrun processes (tp_plan="auto"), for 70B-class models

    def validate(self) -> None:
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("attn", self.attn, ATTNS)


@dataclass
class RunConfig:
    """Execution and output settings that do not change which tokens are scored."""

    out: str = "runs/score"
    batch_size: int | str = 1  # rows per batch, or "auto": the most that fit in memory (measured at start)
    plan: str = "auto"
    batch_tokens: int | None = None  # token budget of a length-bucketed batch (docs plan)
    fp32_check: bool = True  # below float32, re-score the first batch in float32 and report the deviation
    mask_heads: bool = False
    loss_chunk_mb: int = 256
    probe: bool = True
    overwrite: bool = False
    quiet: bool = False
    resume: bool = False  # continue an interrupted run in the same --out from its finished windows
    window_tokens: int | None = None  # tokens per result shard (None: max(65536, 16 x batch x seq-len))
    loss_kernel: str = "auto"  # tiled, or cce (Cut Cross-Entropy); auto: cce on CUDA when installed and checked
    compile: bool = False  # torch.compile each decoder layer (checked against eager at start)

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
        for part in (self.model, self.corpus, self.layout, self.run):
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
    matrix: str = "seed"
    bootstrap: int = 1000
    seed: int = 0

    def validate(self, min_models: int = 2) -> CompareConfig:
        if len(self.models) < min_models:
            raise UsageError("compare needs at least two models",
                             "pass --base A --instruct B, or --model NAME=PATH twice")
        names = [n for n, _ in self.models]
        if len(set(names)) != len(names):
            raise UsageError(f"model names must differ: {names}")
        for name in names:
            if not name or "/" in name or name.startswith("."):
                raise UsageError(f"--model {name!r}: a model name must be a plain word (NAME=PATH)")
        if self.matrix not in MATRICES:
            raise UsageError(f"--matrix: {self.matrix!r} is not one of {', '.join(MATRICES)}")
        if self.bootstrap < 100:
            raise UsageError("--bootstrap must be at least 100 resamples")
        self.corpus.validate()
        self.layout.validate()
        self.run.validate()
        replace(self.model, name="x").validate()
        return self
