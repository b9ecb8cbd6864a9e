"""Files that are either complete or absent: every file lossgap finishes is written under a temporary name and
renamed, so an interrupted write (a crash, kill -9, a full disk) never leaves a file that looks complete."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError
from .schema import clean

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_path(path: Path, suffix: str = PARTIAL_SUFFIX) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed to `path` when the block succeeds, removed when it fails.
    A file under its final name is therefore always complete, whatever interrupts the write."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: dict) -> Path:
    """Strict JSON, which every reader accepts: NaN is null and an overflowing perplexity schema.INF (clean), never
    the NaN or Infinity that Python's json writes."""
    return write_text(path, json.dumps(clean(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def writable_dir(path: Path, what: str = "--out", shown: Path | None = None) -> Path:
    """Create the folder and prove that a file can be written in it, or refuse naming it (or `shown`, the option's
    value when the folder is its parent): a run finds out before its model loads, not at its first result."""
    path = Path(path)
    shown = Path(shown) if shown is not None else path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lossgap-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{what} {shown}: {_why_not_writable(path, shown, e)}",
                         f"choose another {what}: a folder on a writable disk, such as one under your home folder") \
            from None
    return path


def _why_not_writable(path: Path, shown: Path, e: OSError) -> str:
    """What an OSError from creating or writing into `path` means, in the user's terms."""
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return "is a file, not a folder" if blocker == shown else f"{blocker} is a file, not a folder"
    reasons = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "not permitted (a virtual or protected file system?)",
        errno.ENOENT: "nothing can be created there (a virtual file system such as /proc?)",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.ENAMETOOLONG: "the name is too long",
    }
    return reasons.get(e.errno, e.strerror or str(e))
