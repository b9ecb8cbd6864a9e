"""Why a model did not load, said by file: transformers' exceptions translated at the loading boundary, and the
checks of what it loaded (tensors the config needs but the weights lack, shapes that differ, NaN/inf weights).

Loading runs in stages (config, tokenizer, weights) so that a failure names the file of its stage. Nothing here
re-validates what transformers validates: the files are looked at only after transformers has failed, to say which
one is damaged and how.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..errors import LossgapError, ModelError
from .ggufparse import parsed_once

REDOWNLOAD = "download the file again (an interrupted download or copy leaves it short or damaged)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "tokenizer.model", "vocab.txt", "merges.txt")
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "added_tokens.json", "vocab.json", "generation_config.json", "model.safetensors.index.json",
              "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Source:
    """What is being loaded: the user's --model, where from_pretrained reads, and a GGUF file inside it."""

    spec: str
    where: str
    gguf: str | None
    trust_remote_code: bool = False

    @property
    def folder(self) -> Path | None:
        path = Path(self.where)
        return path if path.is_dir() else None

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.where) / self.gguf if self.gguf else None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _chain(e: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or during (transformers wraps hub errors in OSError)."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _text(chain: list[BaseException]) -> str:
    return "\n".join(str(x) for x in chain)


@contextmanager
def loading(source: Source, stage: str) -> Iterator[None]:
    """Run transformers' loading of one stage: any exception becomes one ModelError naming the file and the fix.
    Only transformers' calls belong inside: a bug of lossgap's own must not read as a damaged file."""
    try:
        with _gguf_bar_off(source), parsed_once() if source.gguf else nullcontext():
            yield
    except LossgapError:
        raise
    except Exception as e:
        raise as_model_error(e, source, stage) from e


@contextmanager
def _gguf_bar_off(source: Source) -> Iterator[None]:
    """With transformers' progress bars off (--quiet), the GGUF conversion's bar off too: transformers draws that one
    with tqdm directly, past its own switch."""
    from transformers.utils import logging as hf_logging

    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils") if source.gguf else None
    bar = getattr(gguf_utils, "tqdm", None)  # imported by transformers when it reads a GGUF file
    if bar is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


@contextmanager
def held_logs(drop: Callable[[logging.LogRecord], bool] | None = None) -> Iterator[None]:
    """transformers' log lines held back: shown when the block succeeds (but those `drop` says are false), dropped
    when it fails (lossgap's one message replaces them, e.g. a load report before a refusal)."""
    from transformers.utils import logging as hf_logging

    root = hf_logging.get_logger("transformers")  # configured now: its own handler is among those held back
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    handlers, hold = list(root.handlers), Hold()
    for h in handlers:
        root.removeHandler(h)
    root.addHandler(hold)
    try:
        yield
    finally:
        root.removeHandler(hold)
        for h in handlers:
            root.addHandler(h)
    for record in held:  # reached only when the stage succeeded
        if drop is not None and drop(record):
            continue
        for h in handlers:
            if record.levelno >= h.level:
                h.handle(record)


def as_model_error(e: BaseException, source: Source, stage: str) -> ModelError:
    """The ModelError for an exception raised while transformers loaded `stage` ("config", "tokenizer", "weights")
    of `source`."""
    import torch

    chain = _chain(e)
    if any(isinstance(x, torch.OutOfMemoryError | MemoryError) for x in chain):
        return ModelError(f"{source.spec}: out of memory while loading the {stage}",
                          "use a smaller --dtype (bfloat16), --device-map auto over several GPUs, or a larger machine")
    if stage == "weights" and any(k in _text(chain) for k in ("attn_implementation", "attention implementation")):
        return ModelError(f"{source.spec}: {first_line(chain[0])[:300]}", "choose another --attn (eager works with "
                          "every model)")
    if source.folder is None:
        return _hub_error(chain, source)
    unreadable = next((x for x in chain if isinstance(x, PermissionError | IsADirectoryError) and x.filename), None)
    if unreadable is not None:
        return ModelError(f"{unreadable.filename}: cannot be read ({unreadable.strerror})",
                          "check the file's permissions, or copy the model somewhere readable")
    found = None if source.gguf else _broken_json(source.folder, stage)
    if found is not None:
        return found
    arch = _architecture_error(chain, source)
    if arch is not None:
        return arch
    if source.gguf:
        return _gguf_error(chain, source)
    if stage == "config":
        return _config_error(chain, source)
    if stage == "tokenizer":
        return _tokenizer_error(chain, source)
    return _weights_error(chain, source)


def _hub_error(chain: list[BaseException], source: Source) -> ModelError:
    from huggingface_hub import errors as hub

    name, text = source.spec, _text(chain)
    if any(isinstance(x, hub.GatedRepoError) for x in chain) or "gated repo" in text:
        return ModelError(f"{name}: the hub refuses access: the model is gated",
                          f"accept its licence at https://huggingface.co/{name}, then log in (`hf auth login` or "
                          "HF_TOKEN); or pass a local folder")
    if any(isinstance(x, hub.RevisionNotFoundError) for x in chain) or "is not a valid git identifier" in text:
        return ModelError(f"{name}: the hub has no such revision", "check --revision (a branch, tag or commit)")
    if any(isinstance(x, hub.RepositoryNotFoundError) for x in chain) or "not a valid model identifier" in text:
        return ModelError(f"{name}: no such model on the hub, and no local folder of that name",
                          "check the spelling of --model; a private model needs `hf auth login`")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or "couldn't connect" in text or any(isinstance(x, hub.OfflineModeIsEnabled) for x in chain):
        return ModelError(f"{name}: not in the local hub cache, and the hub cannot be reached"
                          f"{' (HF_HUB_OFFLINE is set)' if offline else ''}",
                          f"download it where there is network (`hf download {name} --local-dir DIR`) and pass "
                          "--model DIR, or copy the hub cache to this machine")
    return ModelError(f"{name}: could not be loaded from the hub ({first_line(chain[0])})",
                      "check the hub id and your network; or pass a local folder")


def _architecture_error(chain: list[BaseException], source: Source) -> ModelError | None:
    """An architecture transformers does not know, custom code it was not allowed to run, or not a causal LM."""
    import transformers

    text = _text(chain)
    where = source.gguf_path or source.folder / "config.json"
    if "contains custom code" in text:
        return ModelError(f"{where}: the model's architecture is defined by code shipped with it (auto_map)",
                          "read that code; if you trust it, pass --trust-remote-code")
    if "does not recognize this architecture" in text or "Unrecognized model in" in text:
        model_type = _config_value(source, "model_type")
        if model_type is None:
            return ModelError(f"{where}: no model_type", "restore the config.json saved with the weights")
        custom = _config_value(source, "auto_map") is not None and not source.trust_remote_code
        return ModelError(
            f"{where}: transformers {transformers.__version__} does not know the architecture {model_type!r} "
            "(model_type)",
            "its auto_map names code shipped with the model: if you trust it, pass --trust-remote-code" if custom
            else "upgrade transformers (pip install -U transformers), or correct model_type in config.json",
        )
    if "for this kind of AutoModel" in text:
        return ModelError(f"{where}: a {_config_value(source, 'model_type')!r} model is not a causal language model",
                          "pass a decoder-only model (one AutoModelForCausalLM loads)")
    return None


def _config_value(source: Source, key: str):
    folder = source.folder
    try:
        return json.loads((folder / "config.json").read_text()).get(key) if folder is not None else None
    except (OSError, ValueError, AttributeError):
        return None


def _gguf_error(chain: list[BaseException], source: Source) -> ModelError:
    path, text = source.gguf_path, _text(chain)
    if "is not supported yet" in text:
        return ModelError(f"{path}: transformers cannot load GGUF files of this architecture ({first_line(chain[0])})",
                          "use the model's safetensors release, or a GGUF of an architecture transformers supports")
    if not path.is_file():
        return ModelError(f"{path}: GGUF file not found", "check the --model path")
    return ModelError(f"{path}: not a readable GGUF file; it is truncated or corrupt "
                      f"({type(chain[0]).__name__}: {first_line(chain[0])[:200]})", REDOWNLOAD)


def _broken_json(folder: Path, stage: str) -> ModelError | None:
    """The first JSON file of the folder that does not parse (only config.json at the config stage)."""
    for name in ("config.json",) if stage == "config" else JSON_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            return ModelError(f"{path}: not valid UTF-8 at byte {e.start}; the file is corrupt", REDOWNLOAD)
        except ValueError as e:
            return ModelError(f"{path}: not valid JSON ({first_line(e)})", REDOWNLOAD)
        except RecursionError:
            return ModelError(f"{path}: not readable JSON (nested too deep)", REDOWNLOAD)
        if not isinstance(value, dict):
            return ModelError(f"{path}: expected a JSON object, got {type(value).__name__}", REDOWNLOAD)
    return None


def _config_error(chain: list[BaseException], source: Source) -> ModelError:
    path = source.folder / "config.json"
    e = chain[0]
    reason = " ".join(line.strip() for line in str(e).strip().splitlines()[:2]) or type(e).__name__
    reason = reason.removeprefix("Validation error for field ").removeprefix("Class validation error for validator ")
    if not path.is_file():
        return ModelError(f"{path}: missing", "copy the model's config.json into the folder")
    return ModelError(f"{path}: not a valid model config: {reason[:300]}",
                      "correct the value in config.json, or restore the config.json saved with the weights")


def _tokenizer_error(chain: list[BaseException], source: Source) -> ModelError:
    folder = source.folder
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not any(name in present for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")):
        return ModelError(f"{folder}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)",
                          "copy the tokenizer files saved with the model into the folder")
    e = chain[0]
    return ModelError(f"{folder / present[0]}: the tokenizer cannot be loaded ({type(e).__name__}: "
                      f"{first_line(e)[:200]})",
                      "the tokenizer files are corrupt or come from another model: copy them again")


def _weights_error(chain: list[BaseException], source: Source) -> ModelError:
    folder, e = source.folder, chain[0]
    missing = next((x for x in chain if isinstance(x, FileNotFoundError)), None)
    if missing is not None:
        name = missing.filename or str(missing).rsplit(": ", 1)[-1]
        return ModelError(f"{name}: missing (the weights index names it)",
                          "the download is incomplete: download the missing file")
    broken = _broken_weights(folder)
    if broken is not None:
        path, reason = broken
        return ModelError(f"{path}: {reason}", REDOWNLOAD)
    if any(isinstance(x, pickle.UnpicklingError) for x in chain):
        return _pickle_refusal(chain, folder)
    files = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return ModelError(f"{folder}: the weights ({', '.join(files) or 'none'}) cannot be loaded "
                      f"({type(e).__name__}: {first_line(e)[:200]})",
                      "check that the folder holds one complete model saved with save_pretrained; --debug shows "
                      "the full traceback")


def _pickle_refusal(chain: list[BaseException], folder: Path) -> ModelError:
    """A .bin checkpoint that torch's weights-only loader refused: it pickles Python objects besides tensors, and
    loading those runs code from the file. Said whole: the file, the objects, why, and what to do instead."""
    import torch.serialization

    def unsafe_globals(path: Path) -> list[str]:  # read from the pickle without loading it (torch >= 2.5)
        try:
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # an older torch, or a file it cannot scan: torch's own reason names the objects
            return []

    bins = sorted(folder.glob("*.bin"))
    unsafe = [(path, names) for path in bins if (names := unsafe_globals(path))]
    where, names = unsafe[0] if unsafe else (bins[0] if len(bins) == 1 else folder, [])
    text = re.sub(r"\x1b\[[0-9;]*m", "", _text(chain))  # torch's reason, without its terminal escape codes
    reason = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
    what = ", ".join(names[:5]) or reason.removeprefix("WeightsUnpickler error: ")[:300] or first_line(chain[0])
    return ModelError(
        f"{where}: refused: the checkpoint holds pickled Python objects besides tensors ({what}); torch's "
        "weights-only loader does not load them, because unpickling them runs code from the file",
        "use the model's .safetensors weights; or, only if you trust where the file came from, load it in your own "
        "Python (torch.load(path, weights_only=False)) and save it again with save_pretrained, which writes "
        "safetensors",
    )


SAFETENSORS_REASONS = {
    "incomplete metadata, file not fully covered": "truncated: shorter than its header says",
    "header too small": "truncated or empty: too short for a safetensors header",
    "invalid JSON in header": "corrupt: its header is not valid JSON",
    "header too large": "corrupt: its header length is wrong",
}


def _broken_weights(folder: Path) -> tuple[Path, str] | None:
    """The first weight file that cannot even be opened (header or zip directory), with why."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt"):
                pass
        except SafetensorError as e:
            text = str(e)
            detail = first_line(e).removeprefix("Error while deserializing header: ")
            reason = next((r for k, r in SAFETENSORS_REASONS.items() if k in text), f"corrupt header ({detail})")
            return path, f"not a readable safetensors file: {reason}"
        except Exception as e:  # any failure to open it names this file
            return path, f"not a readable safetensors file ({first_line(e)})"
    for path in sorted(folder.glob("*.bin")):
        if not zipfile.is_zipfile(path):
            return path, "not a readable PyTorch checkpoint: truncated or corrupt (no zip directory)"
    return None


def check_loading_info(info: dict, source: Source) -> None:
    """Refuse weights that do not fill the model the config describes: a tensor the weights lack would be random,
    one of another shape reinitialised (transformers only warns about either)."""
    where = weights_named(source)
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        name, ckpt, model = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ModelError(
            f"{where}: the weights do not match the config: {name} is {list(ckpt)} in the weights but "
            f"{list(model)} by the config{more}",
            "the config and the weights come from different models: restore the config saved with these weights",
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelError(f"{where}: the weights lack {len(missing)} tensor(s) the config needs "
                         f"({', '.join(missing[:3])}{more}); they would be random",
                         "the config and the weights come from different models, or the download is incomplete")


def weights_named(source: Source) -> str:
    """The weight files of a source, as a message names them."""
    if source.gguf_path is not None:
        return str(source.gguf_path)
    folder = source.folder
    if folder is None:
        return source.spec
    files = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return str(folder / files[0]) if len(files) == 1 else f"{folder} ({len(files)} weight files)"
