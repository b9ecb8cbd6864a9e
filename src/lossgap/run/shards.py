"""Per-window result shards and their manifest: what makes a run resumable after a crash or kill -9.

Each window's per-token results go to shards/window-NNNNNNNN.parquet through a temporary file and an atomic
rename, so a shard on disk is always complete. The manifest records the config, corpus and model fingerprints;
`--resume` refuses to continue a run whose inputs changed and says what changed, and a shards folder whose manifest
is missing, damaged or edited. A damaged shard (truncated, corrupt, foreign, of another run) is never merged: its
window is scored again, and stderr says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UsageError
from ..formats.files import atomic_path, remove_folder, write_text
from ..formats.paths import RunFiles

RUN_FIELD = "run_sha256"  # the manifest's hash, in the manifest (edits show) and in every shard (foreign ones show)
RUN_KEY = b"lossgap.run"


class ShardStore:
    """The shards folder of one run. Every shard carries the run's fingerprint (the manifest's hash) in its Parquet
    metadata and page checksums, so that on --resume a truncated, corrupt or foreign shard, or one of another run,
    is found and its window scored again (said on stderr) instead of being merged."""

    def __init__(self, files: RunFiles, manifest: dict, resume: bool, main: bool = True,
                 schema: pa.Schema | None = None):
        self.files = files
        self.dir = files.shards
        self.manifest_path = files.shard_manifest
        self.run = manifest_hash(manifest)
        self.resume, self.main, self.schema = resume, main, schema
        self._valid: set[int] = set()  # windows whose shard was checked or written by this process
        self._reported: set[int] = set()
        if main:
            if resume and self.dir.exists():
                _check_manifest(files, manifest)
            elif self.dir.exists():
                remove_folder(self.dir)  # a fresh run (prepare_out_dir already required --overwrite for this)
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text(self.manifest_path, json.dumps({**manifest, RUN_FIELD: self.run}, indent=2, sort_keys=True,
                                                      default=str) + "\n")

    def path(self, window: int) -> Path:
        return self.files.shard(window)

    def done(self, window: int) -> bool:
        """Whether the window has a sound shard of this run. A shard of another run is never merged, with or without
        --resume (its fingerprint is checked; with --resume every page's checksum too). A damaged one is not done:
        its window is scored again and the new shard replaces it (never deleted here: another rank may be writing
        its replacement)."""
        if window in self._valid:
            return True
        if not self.path(window).is_file():
            return False
        reason = self._damage(window, every_page=self.resume)
        if reason is None:
            self._valid.add(window)
            return True
        if self.main and window not in self._reported:
            self._reported.add(window)
            print(f"lossgap: {'--resume: ' if self.resume else ''}{self.path(window)} {reason}; window {window} is "
                  "scored again", file=sys.stderr, flush=True)
        return False

    def _damage(self, window: int, every_page: bool = True) -> str | None:
        """Why the window's shard cannot be merged, or None when it is sound."""
        try:
            f = pq.ParquetFile(self.path(window), page_checksum_verification=True)
            fingerprint = (f.schema_arrow.metadata or {}).get(RUN_KEY)
            if fingerprint is None:
                return "is not a shard of a lossgap run (no run fingerprint)"
            if fingerprint.decode() != self.run:
                return "is a shard of another run (its fingerprint differs from this run's manifest)"
            if self.schema is not None and not f.schema_arrow.remove_metadata().equals(self.schema.remove_metadata()):
                return "has other columns than this run writes"
            if every_page:
                f.read()  # every page, checksums verified
        except FileNotFoundError:
            return "is gone"
        except (OSError, ValueError, pa.ArrowException) as e:
            text = str(e.args[0] if e.args else e).strip() or type(e).__name__
            return f"is truncated or corrupt ({text.splitlines()[0][:160]})"
        return None

    def write(self, window: int, table: pa.Table) -> None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), RUN_KEY: self.run.encode()})
        with atomic_path(self.path(window), ".tmp") as tmp:
            pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
        self._valid.add(window)

    def read(self, window: int) -> pa.Table:
        """The window's shard, every page's checksum verified."""
        return pq.ParquetFile(self.path(window), page_checksum_verification=True).read()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def manifest_hash(manifest: dict) -> str:
    """The run's fingerprint: a hash of the manifest's content as JSON stores it (key order does not matter)."""
    stored = json.loads(json.dumps(manifest, default=str))
    return hashlib.sha256(json.dumps(stored, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_manifest(files: RunFiles, manifest: dict) -> None:
    """Refuse to resume from a shards folder whose manifest is missing, damaged or edited, or whose inputs changed."""
    shards, path = files.shards, files.shard_manifest
    fix = "start again with --overwrite (or a new --out): the finished windows cannot be trusted without it"
    if not path.is_file():
        if files.shard_files():
            raise UsageError(f"--resume: {path} is missing, so the finished windows in {shards} cannot be checked", fix)
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"--resume: {path} is damaged (not readable JSON: {e})", fix) from None
    stored = old.pop(RUN_FIELD, None) if isinstance(old, dict) else None
    if stored is None:
        raise UsageError(f"--resume: {path} has no content hash (edited, or written by another lossgap version)", fix)
    if stored != manifest_hash(old):
        raise UsageError(f"--resume: {path} was edited: its content no longer matches its hash", fix)
    _check_same(old, manifest)


def _check_same(old: dict, new: dict) -> None:
    changed = [part for part in ("config", "corpus", "model", "window_tokens") if old.get(part) != new.get(part)]
    if not changed:
        return
    details = [", ".join(_differences(old.get(part), new.get(part))) for part in changed]
    details = [f"{part}: {d}" if d else part for part, d in zip(changed, details, strict=True)]
    raise UsageError(
        f"--resume: the {' and '.join(changed)} changed since the interrupted run ({'; '.join(details)})",
        "resume with the same inputs, or start again with --overwrite or a new --out",
    )


def _differences(a, b) -> list[str]:
    """What differs between two fingerprints, by name: settings, and the files whose content changed."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)):
            files = _differences(a.get(key), b.get(key)) if key == "files" else []
            out.append(f"{key} ({', '.join(files)})" if files else key)
        return out
    if isinstance(a, list) and isinstance(b, list) and a and all(isinstance(x, dict) and "file" in x for x in a + b):
        old, new = {x["file"]: x for x in a}, {x["file"]: x for x in b}
        return [name for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):  # the paired pass's two models
        return [d for x, y in zip(a, b, strict=True) for d in _differences(x, y)]
    return []
