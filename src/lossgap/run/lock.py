"""One run per output folder: an exclusive lock on --out for the whole run, so two runs started on one folder never
interleave their shards and files; the second is refused, naming the folder and the process that holds it.

The lock is an flock on OUT/.lossgap.lock: the kernel releases it when its process ends, however it ends (kill -9
included), so a stale lock file never blocks a later run. The file is never deleted (a run that deleted it could
race a third one into the same folder)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import UsageError
from ..formats.files import refuse_links, writable_dir

LOCK_NAME = ".lossgap.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None


class OutLocks(contextlib.ExitStack):
    """Exclusive locks on every folder in `folders` (created if missing) while the block runs."""

    def __init__(self, folders: list[Path]):
        super().__init__()
        self.folders = [Path(f) for f in folders]

    def __enter__(self):
        super().__enter__()
        try:
            for folder in self.folders:
                self.enter_context(_locked(folder))
        except BaseException:
            self.close()
            raise
        return self


@contextlib.contextmanager
def _locked(folder: Path):
    if fcntl is None:
        yield
        return
    path = folder / LOCK_NAME
    refuse_links(folder, [path])  # never write through a link, not even the lock
    writable_dir(folder)  # a file, a read-only disk: refused here, before anything else
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise UsageError(f"--out {folder}: cannot create its lock file {path} ({e.strerror or e})",
                         "choose another --out: a folder on a writable disk") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {folder} is in use by another lossgap run ({_holder(fd)})",
                             "wait until it ends, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}) + "\n").encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(info.get("argv") or []))
        return f"process {info['pid']} on {info['host']}, started {info['started']}: {command}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is still starting"
