"""Per-window result shards and their manifest: what makes a run resumable after a crash or kill -9.

Each window's per-token results go to shards/window-NNNNNNNN.parquet through a temporary file and an atomic
rename, so a shard on disk is always complete. The manifest records the config, corpus and model fingerprints;
`--resume` refuses to continue a run whose inputs changed and says what changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError
from .files import atomic_path, write_text

SHARDS_DIR = "shards"
MANIFEST_FILE = "manifest.json"
_EDGE = 1 << 20  # bytes hashed at each end of a corpus file: cheap on a 2 GB Pile shard, catches edits at either end


def corpus_fingerprint(files: list[Path]) -> dict:
    """Name, size and a hash of both ends of every corpus file."""
    out = []
    for path in files:
        size = path.stat().st_size
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(_EDGE))
            if size > 2 * _EDGE:
                f.seek(size - _EDGE)
                h.update(f.read(_EDGE))
            elif size > _EDGE:
                h.update(f.read())
        out.append({"file": path.name, "size": size, "sha256_ends": h.hexdigest()})
    return {"files": out}


def model_fingerprint(name: str, describe: dict) -> dict:
    """The model's identity: its description, plus names, sizes and config hash of a local folder's files."""
    fp = {k: describe[k] for k in ("model_type", "vocab_size", "n_params", "dtype")}
    fp["name"] = name
    path = Path(name).expanduser()
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".gguf", ".bin"))
        fp["weights"] = [{"file": p.name, "size": p.stat().st_size} for p in files]
        config = folder / "config.json"
        if config.is_file():
            fp["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    return fp


class ShardStore:
    """The shards folder of one run."""

    def __init__(self, out_dir: Path, manifest: dict, resume: bool, main: bool = True):
        self.dir = out_dir / SHARDS_DIR
        self.manifest_path = self.dir / MANIFEST_FILE
        if main:
            if resume and self.manifest_path.is_file():
                _check_same(json.loads(self.manifest_path.read_text()), manifest)
            elif self.dir.exists():
                shutil.rmtree(self.dir)  # a fresh run (prepare_out_dir already required --overwrite for this)
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def path(self, window: int) -> Path:
        return self.dir / f"window-{window:08d}.parquet"

    def done(self, window: int) -> bool:
        return self.path(window).is_file()

    def write(self, window: int, table: pa.Table) -> None:
        with atomic_path(self.path(window), ".tmp") as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def read(self, window: int) -> pa.Table:
        return pq.read_table(self.path(window))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_same(old: dict, new: dict) -> None:
    changed = [part for part in ("config", "corpus", "model", "window_tokens") if old.get(part) != new.get(part)]
    if not changed:
        return
    details = []
    for part in changed:
        a, b = old.get(part), new.get(part)
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            details.append(f"{part}: {', '.join(keys)}")
        else:
            details.append(part)
    raise UsageError(
        f"--resume: the {' and '.join(changed)} changed since the interrupted run ({'; '.join(details)})",
        "resume with the same inputs, or start again with --overwrite or a new --out",
    )

