"""Files that are either complete or absent: every file lossgap finishes is written under a temporary name and
renamed, so an interrupted write (a crash, kill -9, a full disk) never leaves a file that looks complete."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
