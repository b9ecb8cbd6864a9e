"""Files that are either complete or absent: every file lossgap finishes is written under a temporary name and
renamed, so an interrupted write (a crash, kill -9, a full disk) never leaves a file that looks complete.

A temporary is a new file of a name no other process uses (<name>.<pid>.<random>.tmp), created exclusively: never
through a symbolic link planted under any name, never shared by two processes writing the same file. The rename
replaces a link at the final name, never its target. A crashed run's leftover temporaries keep their .tmp names, so
none is ever taken for a result (tokens.parquet.partial, an interrupted run's tokens, is a result, not a temporary).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError
from .schema import clean

PARTIAL_SUFFIX = ".partial"  # tokens.parquet.partial: the tokens of a run that stopped early
TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o666  # results: the umask decides, as for any file a program creates
PRIVATE_MODE = 0o600  # the error log: it holds the command line and paths
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def new_temporary(path: Path, suffix: str = TEMP_SUFFIX, mode: int = FILE_MODE) -> Path:
    """A new empty file beside `path`, named <name>.<pid>.<random><suffix>, that this call created: O_EXCL fails on
    any file or symbolic link already under that name, so a write to it never lands anywhere else."""
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(6)}{suffix}")
        try:
            os.close(os.open(tmp, _CREATE, mode))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name beside it", str(path))


@contextmanager
def atomic_path(path: Path, suffix: str = TEMP_SUFFIX, mode: int = FILE_MODE) -> Iterator[Path]:
    """A new temporary file beside `path` to write to; renamed to `path` when the block succeeds, removed when it
    fails. A file under its final name is therefore always complete, whatever interrupts the write; a symbolic link
    under the final name is replaced, its target never written."""
    path = Path(path)
    tmp = new_temporary(path, suffix, mode)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        named = _named(e, path)
        if named is e:
            raise
        raise named from e
    finally:
        tmp.unlink(missing_ok=True)


def _named(e: OSError, path: Path) -> OSError:
    """A full disk as the writers report it (pyarrow, matplotlib and file.write name no file) with the file named,
    so that the message says where; any other error unchanged."""
    if e.errno in _DISK_FULL and not e.filename:
        return OSError(e.errno, os.strerror(e.errno), str(path))
    return e


def write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> Path:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str, mode: int = FILE_MODE) -> Path:
    return write_bytes(path, text.encode("utf-8"), mode)


def write_json(path: Path, data: dict) -> Path:
    """Strict JSON, which every reader accepts: NaN is null and an overflowing perplexity schema.INF (clean), never
    the NaN or Infinity that Python's json writes."""
    return write_text(path, json.dumps(clean(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def refuse_links(folder: Path, owned: Iterable[Path], what: str = "--out") -> None:
    """Refuse an output folder that is a symbolic link, or that holds one where lossgap writes, replaces or deletes
    (its own files and folders, and anything inside those folders): lossgap never writes or deletes through a link.
    Checked before anything is written or deleted."""
    folder = Path(folder)
    if folder.is_symlink():
        raise UsageError(f"{what} {folder} is a symbolic link (to {os.readlink(folder)})",
                         f"pass the folder it points to as {what} ({folder.resolve()}), or choose another {what}")
    link = next(_links_among(owned), None)
    if link is not None:
        raise UsageError(f"{what} {folder}: {link} is a symbolic link (to {os.readlink(link)})",
                         f"lossgap replaces and deletes {link.name} and never follows a link there: remove the "
                         f"link, or choose another {what}")


def _links_among(owned: Iterable[Path]) -> Iterator[Path]:
    """The symbolic links among `owned` and inside those of them that are folders (links to folders not entered)."""
    for path in map(Path, owned):
        if path.is_symlink():
            yield path
        elif path.is_dir():
            for root, dirs, names in os.walk(path):
                yield from (Path(root, name) for name in (*dirs, *names) if os.path.islink(os.path.join(root, name)))


def remove_folder(path: Path) -> None:
    """Delete a folder lossgap owns, refusing a symbolic link in its place: its target is not lossgap's."""
    path = Path(path)
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link (to {os.readlink(path)}), not a folder lossgap made",
                         "remove the link, or choose another --out")
    shutil.rmtree(path)


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
