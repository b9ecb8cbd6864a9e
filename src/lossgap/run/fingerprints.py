"""What a run's numbers depend on, by content: a SHA-256 of every corpus file and of every file of a local model
(weights, config, tokenizer). `--resume` and a finished run are trusted only if these are unchanged, so another
checkpoint copied over model.safetensors, or a same-length edit in the middle of the corpus, is refused.

Hashing a 16 GB checkpoint takes seconds, so each file's hash is cached by what identifies its bytes on disk:
device, inode, size, modification and change time (the ctime cannot be set back by `cp -p` or `touch`, so a file
rewritten in place is hashed again). The cache lives in $LOSSGAP_CACHE_DIR or $XDG_CACHE_HOME/lossgap (default
~/.cache/lossgap); when it cannot be written, files are simply hashed every time. The hashes start in a background
thread while the model loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from ..engine.model import BUILTIN_MODELS, builtin_model_path
from ..errors import LossgapError
from ..formats.files import write_json

MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model", ".txt", ".jinja",
                       ".tiktoken")
_CACHE_LOCK = threading.Lock()
_MEMO: dict[tuple, str] = {}  # (path, identity) -> sha256: this process hashes a file once, cache or none


def cache_path() -> Path:
    """$LOSSGAP_CACHE_DIR/sha256.json, else under $XDG_CACHE_HOME (default ~/.cache)."""
    folder = os.environ.get("LOSSGAP_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                         "lossgap")
    return Path(folder) / "sha256.json"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_sha256(path: Path) -> str:
    """The file's SHA-256, from the cache when the file is provably the one hashed before."""
    path = Path(path).resolve()
    identity = _identity(path.stat())
    key = (str(path), *identity)
    with _CACHE_LOCK:
        cached = _MEMO.get(key) or (_read_cache().get(str(path)) or {})
    if isinstance(cached, str):
        return cached
    if cached.get("identity") == identity:
        return cached["sha256"]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if _identity(path.stat()) == identity:  # not rewritten while it was read
        with _CACHE_LOCK:
            _MEMO[key] = digest
            cache = _read_cache()
            cache[str(path)] = {"identity": identity, "sha256": digest}
            _write_cache(cache)
    return digest


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict) -> None:
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_json(cache_path(), cache)
    except OSError:
        pass  # a read-only home: hash again next time


def model_files(name: str) -> list[Path]:
    """The local files a model is read from: the GGUF file itself, or every weight, config and tokenizer file of
    its folder. A hub id has none here (its revision stands for its content)."""
    path = builtin_model_path(name) if name in BUILTIN_MODELS else Path(name).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
    return []


def corpus_fingerprint(files: list[Path], path: str) -> dict:
    """Name, size and content hash of every corpus file (a hub dataset: its name)."""
    if not files:
        return {"path": str(path)}
    return {"files": [{"file": p.name, "size": p.stat().st_size, "sha256": file_sha256(p)} for p in files]}


def model_fingerprint(name: str, describe: dict, revision: str | None = None) -> dict:
    """The model's identity: its description, and the name, size and content hash of each of its local files."""
    fp = {k: describe[k] for k in ("model_type", "vocab_size", "n_params", "dtype")}
    fp["name"] = name
    files = model_files(name)
    if files:
        fp["files"] = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    elif revision:
        fp["revision"] = revision
    return fp


class Hashing:
    """File hashes computed in a background thread (hashlib releases the GIL): started before the model loads,
    collected when the run's manifest is written."""

    def __init__(self, paths: list[Path]):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(paths),), daemon=True)
        self._thread.start()

    def _run(self, paths: list[Path]) -> None:
        try:
            for p in paths:
                file_sha256(p)
        except BaseException as e:  # reported by wait(), in the main thread
            self._error = e

    def wait(self) -> None:
        self._thread.join()
        if isinstance(self._error, OSError):
            raise LossgapError(f"cannot read {self._error.filename or 'an input file'} to fingerprint it: "
                               f"{self._error.strerror or self._error}", "check the file, then run again")


def prehash(corpus_files: list[Path], model_names: list[str]) -> Hashing:
    """Start hashing a run's inputs while its model loads; cheap when the cache already knows them."""
    paths = list(corpus_files)
    for name in model_names:
        with contextlib.suppress(LossgapError):  # a missing built-in model is reported by the loader
            paths += model_files(name)
    return Hashing(paths)
