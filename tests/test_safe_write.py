"""lowbit.safe_write: whole or nothing, no links, no devices, --force to replace, permissions kept, leftovers cleaned."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from lowbit import safe_write
from lowbit.errors import LowbitError
from lowbit.safe_write import TMP_PREFIX, atomic_file, atomic_path, check_target, clean_stale, write_text


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_gets_the_umask_mode(tmp_path, umask):
    out = write_text(tmp_path / "a.txt", "hello")
    assert out.read_text() == "hello"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    os.umask(0o077)
    assert stat.S_IMODE(write_text(tmp_path / "b.txt", "x").stat().st_mode) == 0o600
    assert _leftovers(tmp_path) == []


def test_existing_file_needs_force_and_keeps_its_mode(tmp_path, umask):
    out = tmp_path / "a.txt"
    out.write_text("old")
    out.chmod(0o640)
    with pytest.raises(LowbitError, match="exists; choose another name or pass --force"):
        write_text(out, "new")
    assert out.read_text() == "old"
    write_text(out, "new", force=True)
    assert out.read_text() == "new" and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("force", [False, True])
def test_a_symlink_at_the_target_is_never_followed_nor_replaced(tmp_path, force):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out.html"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.html"
    dangling.symlink_to(tmp_path / "nowhere")
    for target in (link, dangling):
        with pytest.raises(LowbitError, match="symbolic link"):
            write_text(target, "evil", force=force)
        assert target.is_symlink()
    assert victim.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("force", [False, True])
def test_non_regular_targets_are_refused(tmp_path, force):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    targets = {fifo: "a FIFO", tmp_path / "dir": "a folder"}
    if os.geteuid() == 0:  # making a device node needs root
        dev = tmp_path / "null"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets[dev] = "a character device"
    for target, kind in targets.items():
        with pytest.raises(LowbitError, match=kind):
            write_text(target, "x", force=force)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)
    assert _leftovers(tmp_path) == []


def test_impossible_targets_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "missing" / "r.html": "does not exist",
        tmp_path / "file" / "r.html": "is not a folder",
        tmp_path / ("x" * 300): "file name too long",
        "/": "names a folder",
        str(tmp_path) + "/": "names a folder",
        "~nosuchuser_lowbit/x.html": "no such user",
        "a\0b": "not a file name",
    }
    for target, message in cases.items():
        with pytest.raises(LowbitError, match=message) as e:
            check_target(target)
        assert "\n" not in str(e.value)


def test_an_error_or_interrupt_in_the_middle_leaves_nothing(tmp_path):
    out = tmp_path / "out.bin"
    for exc in (RuntimeError("boom"), KeyboardInterrupt(), SystemExit(3)):
        with pytest.raises(type(exc)):
            with atomic_file(out) as f:
                f.write(b"x" * 100_000)
                raise exc
        assert not out.exists() and _leftovers(tmp_path) == []
    out.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out, force=True) as tmp:
            tmp.write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert out.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out.bin"
    with pytest.raises(LowbitError, match="cannot write .*No space left on device"):
        with atomic_file(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_no_room_is_refused_before_any_work(tmp_path, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(safe_write.shutil, "disk_usage", lambda _: Usage)
    with pytest.raises(LowbitError, match="not enough room .* needs about 0.0 MB, 0.0 MB free"):
        check_target(tmp_path / "big.gguf", need_bytes=2000)
    check_target(tmp_path / "small.gguf", need_bytes=500)


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *a):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(safe_write.os, "open", read_only)
    with pytest.raises(LowbitError, match="cannot write to folder .*Read-only file system"):
        check_target(tmp_path / "x.html")


def test_two_writers_one_name_exactly_one_wins(tmp_path):
    out = tmp_path / "q.gguf"
    with pytest.raises(LowbitError, match="appeared while lowbit wrote it"):
        with atomic_file(out) as first:
            with atomic_file(out) as second:  # both passed the "does not exist" check
                second.write(b"Q1_0")
            first.write(b"Q8_0")
    assert out.read_bytes() == b"Q1_0" and _leftovers(tmp_path) == []


def test_two_writers_with_force_the_last_one_wins_whole(tmp_path):
    out = tmp_path / "q.gguf"
    with atomic_file(out, force=True) as first:
        with atomic_file(out, force=True) as second:
            second.write(b"A" * 1000)
        first.write(b"B" * 2000)
    assert out.read_bytes() == b"B" * 2000


@pytest.mark.parametrize("renameat2", [True, False])
def test_filesystems_without_hard_links_still_refuse_atomically(tmp_path, monkeypatch, renameat2):
    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    def no_renameat2(*a):
        raise OSError(errno.ENOSYS, "no renameat2")

    monkeypatch.setattr(safe_write.os, "link", no_links)
    if not renameat2:  # then the name is claimed with O_EXCL
        monkeypatch.setattr(safe_write, "_rename_noreplace", no_renameat2)
    assert write_text(tmp_path / "first", "one").read_text() == "one"
    out = tmp_path / "x"
    with pytest.raises(LowbitError, match="appeared while"):
        with atomic_file(out) as f:
            out.write_text("raced")  # appears after the check, before the rename
            f.write(b"two")
    assert out.read_text() == "raced" and _leftovers(tmp_path) == []


def test_stale_temporary_files_are_cleaned_fresh_ones_kept(tmp_path):
    old, fresh = tmp_path / f"{TMP_PREFIX}dead", tmp_path / f"{TMP_PREFIX}live"
    other = tmp_path / ".not-ours.tmp"
    for p in (old, fresh, other):
        p.write_bytes(b"partial")
    hour_ago = time.time() - safe_write.STALE_SECONDS - 60
    os.utime(old, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    write_text(tmp_path / "out.txt", "x")  # any write into the folder cleans up after killed runs
    assert not old.exists() and fresh.exists() and other.exists()
    assert clean_stale(tmp_path, older_than=0) == 1 and not fresh.exists()


def test_a_replaced_temporary_file_is_not_published(tmp_path):
    out = tmp_path / "out.gguf"
    with pytest.raises(LowbitError, match="was replaced"):
        with atomic_path(out) as tmp:
            tmp.unlink()
            tmp.write_text("planted")
    assert not out.exists()
