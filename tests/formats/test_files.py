"""Files written whole or not at all, under temporary names no other process shares, and never through a symbolic
link; an output folder that is or holds a link where lossgap writes is refused naming it."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from lossgap.errors import UsageError
from lossgap.formats.files import PRIVATE_MODE, atomic_path, refuse_links, remove_folder, write_text
from lossgap.formats.paths import RunFiles


def _victim(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("not lossgap's\n")
    return victim


def test_two_writers_of_one_file_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "summary.json"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(f"summary.json.{os.getpid()}.") and a.name.endswith(".tmp")
        a.write_text("a")
        b.write_text("b")
    # the last to finish wins, whole: b's block closes first, then a's
    assert target.read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_links_at_the_final_and_the_old_temporary_names_are_replaced_not_followed(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("summary.json", "summary.json.partial", "summary.json.tmp"):
        (out / name).symlink_to(victim)
    write_text(out / "summary.json", "{}\n")
    assert victim.read_text() == "not lossgap's\n"
    assert not (out / "summary.json").is_symlink() and (out / "summary.json").read_text() == "{}\n"


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path):
    target = tmp_path / "documents.parquet"
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as pyarrow reports it: no file named
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_private_file_is_readable_by_its_owner_only(tmp_path):
    path = write_text(tmp_path / "lossgap-error.log", "traceback\n", PRIVATE_MODE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_links_where_lossgap_writes_are_refused_naming_them(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    refuse_links(out, RunFiles(out).owned())  # no link: nothing to say
    (out / "shards" / "manifest.json").symlink_to(victim)
    with pytest.raises(UsageError, match="manifest.json is a symbolic link"):
        refuse_links(out, RunFiles(out).owned())
    linked = tmp_path / "linked"
    linked.symlink_to(out)
    with pytest.raises(UsageError, match=f"--out {linked} is a symbolic link"):
        refuse_links(linked, RunFiles(linked).owned())


def test_a_link_in_place_of_a_folder_is_never_deleted_through(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine\n")
    (tmp_path / "shards").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="shards is a symbolic link"):
        remove_folder(tmp_path / "shards")
    assert (elsewhere / "keep.txt").read_text() == "mine\n"
