"""The one way lowbit writes a file: whole or not at all, never through a link, never over what it may not replace.

Every output (the HTML report, a quantized GGUF, the model cache, JSON results) goes through here:

- the bytes go to a new temporary file in the target's folder (`.lowbit-tmp-<random>`, created with O_EXCL
  and O_NOFOLLOW, mode from the umask, or the replaced file's mode), which any error or interrupt removes;
- the file and then the folder are fsynced before the file takes the target's name;
- without `force` an existing target is refused, atomically: the file is hard-linked to its name (which fails
  when the name exists), so of two writers racing for one name exactly one succeeds; with `force` it is renamed
  over the target (os.replace);
- a symbolic link, a folder, a device, a FIFO or a socket at the target is never replaced or written through;
- `check_target` answers, before long work starts, whether the folder exists, is writable and has room;
- temporary files of ours older than STALE_SECONDS (left by a killed process) are removed from the folder
  whenever lowbit next writes there.

Every failure is one LowbitError line.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import IO, Iterator

from lowbit.errors import LowbitError

TMP_PREFIX = ".lowbit-tmp-"
STALE_SECONDS = 3600  # a live writer touches its file far more often than this
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}
# errors that mean "this output cannot be written" (as opposed to a bug, or a problem reading an input)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM,
                 errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.ELOOP, errno.EEXIST}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def output_path(path: str | os.PathLike) -> Path:
    """The target as a Path: `~` expanded, NUL bytes and names that cannot be files refused."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text or "\0" in text:
        raise LowbitError(f"{text!r} is not a file name")
    try:
        p = Path(text).expanduser()
    except (RuntimeError, KeyError):  # ~nosuchuser: no home directory to expand to
        raise LowbitError(f"cannot expand {text!r}: no such user's home folder") from None
    if text.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
        raise LowbitError(f"{text!r} names a folder; give a file name")
    return p


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _check_existing(p: Path, force: bool) -> os.stat_result | None:
    """The target's lstat (None when absent), after the rules: no links, only regular files, --force to replace."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LowbitError(f"cannot write {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise LowbitError(f"{p} is {_kind(st.st_mode)}; lowbit writes only regular files and never follows a link "
                          f"at the output (name the file itself)")
    if not force:
        raise LowbitError(f"{p} exists; choose another name or pass --force")
    return st


def _check_folder(p: Path) -> Path:
    folder = p.parent
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise LowbitError(f"folder {folder} does not exist") from None
    except OSError as e:
        raise LowbitError(f"cannot write to folder {folder}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise LowbitError(f"{folder} is not a folder")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(p.name)) > name_max:
        raise LowbitError(f"file name too long: {len(os.fsencode(p.name))} bytes, the limit here is {name_max}")
    return folder


def clean_stale(folder: str | os.PathLike, older_than: float = STALE_SECONDS) -> int:
    """Remove our temporary files (and folders: a tokenizer copy is saved as one) older than `older_than`
    seconds, left by a killed writer; how many."""
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    for e in entries:
        if not e.name.startswith(TMP_PREFIX):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if (uid is not None and st.st_uid != uid) or now - st.st_mtime <= older_than:
                continue
            if stat.S_ISREG(st.st_mode):
                os.unlink(e.path)
                removed += 1
            elif stat.S_ISDIR(st.st_mode):
                shutil.rmtree(e.path)  # rmtree never follows a link inside
                removed += 1
        except OSError:
            pass  # another run cleaned it first, or it is not ours to remove
    return removed


def _tmp_name() -> str:
    return f"{TMP_PREFIX}{secrets.token_hex(8)}"


def check_target(path: str | os.PathLike, force: bool = False, need_bytes: int = 0) -> Path:
    """Before long work: the target may be written (rules above), its folder is writable and has `need_bytes`
    free. Also cleans stale temporary files of ours in that folder. Returns the target path."""
    p = output_path(path)
    folder = _check_folder(p)
    _check_existing(p, force)
    clean_stale(folder)
    probe = folder / _tmp_name()
    try:  # os.access is not enough: read-only mounts, ACLs and root squashing only show on a real create
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise LowbitError(f"cannot write to folder {folder}: {e.strerror or e}") from None
    if need_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise LowbitError(f"not enough room in {folder} for {p.name}: it needs about {_mb(need_bytes)}, "
                              f"{_mb(free)} free")
    return p


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the file itself is synced
        pass
    finally:
        os.close(fd)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path) -> None:
    """renameat2(RENAME_NOREPLACE), for filesystems without hard links; OSError(ENOSYS) when unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        raise OSError(errno.ENOSYS, "renameat2 unavailable") from None
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def _publish_noreplace(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        try:  # no hard links here (FAT, some FUSE): the kernel's no-replace rename is just as atomic
            _rename_noreplace(tmp, target)
            return
        except OSError as e2:
            if e2.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        # last resort: claim the name with O_EXCL, then rename over our own claim
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.replace(tmp, target)
        return
    os.unlink(tmp)


class _Pending:
    """One temporary file on its way to becoming `target`."""

    def __init__(self, target: Path, force: bool, need_bytes: int):
        self.target = check_target(target, force, need_bytes)
        self.force = force
        self.tmp = self.target.parent / _tmp_name()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.tmp, flags, 0o666)  # the umask decides, as for any new file
        except OSError as e:
            raise LowbitError(f"cannot write to folder {self.target.parent}: {e.strerror or e}") from None
        self.ident = os.fstat(self.fd)[1:3]  # (ino, dev): the file we made, not one planted under its name
        if force:
            try:
                old = os.lstat(self.target)
                if stat.S_ISREG(old.st_mode):
                    os.fchmod(self.fd, stat.S_IMODE(old.st_mode))  # replacing keeps the file's permissions
            except OSError:
                pass

    def commit(self) -> None:
        os.fsync(self.fd)
        st = os.lstat(self.tmp)
        if st[1:3] != self.ident or not stat.S_ISREG(st.st_mode):
            raise LowbitError(f"the temporary file for {self.target} was replaced while lowbit wrote it")
        if self.force:
            _check_existing(self.target, True)  # a link or device may have appeared since the start
            os.replace(self.tmp, self.target)
        else:
            try:
                _publish_noreplace(self.tmp, self.target)
            except FileExistsError:
                raise LowbitError(f"{self.target} appeared while lowbit wrote it (another run?); "
                                  f"choose another name or pass --force") from None
        _fsync_dir(self.target.parent)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _as_write_error(e: OSError, pending: _Pending) -> LowbitError | None:
    """An OSError from writing our file, as one line; None for an error about some other file (an input)."""
    mine = e.filename in (None, str(pending.tmp), str(pending.target), pending.tmp, pending.target)
    if mine and e.errno in _WRITE_ERRNOS:
        return LowbitError(f"cannot write {pending.target}: {e.strerror or e}")
    return None


@contextlib.contextmanager
def _pending(path: str | os.PathLike, force: bool, need_bytes: int) -> Iterator[_Pending]:
    pending = _Pending(Path(path), force, need_bytes)
    try:
        yield pending
        pending.commit()
    except OSError as e:
        pending.discard()
        err = _as_write_error(e, pending)
        if err is None:
            raise
        raise err from None
    except BaseException:  # KeyboardInterrupt and SystemExit too: never leave the temporary file behind
        pending.discard()
        raise
    finally:
        pending.discard()  # after a commit the temporary name is gone already; this closes the descriptor


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = False, need_bytes: int = 0,
                text: bool = False) -> Iterator[IO]:
    """`with atomic_file(out, force) as f: f.write(...)`: `out` appears complete when the block ends, or not at all."""
    with _pending(path, force, need_bytes) as p:
        f = os.fdopen(os.dup(p.fd), "w" if text else "wb", **({"encoding": "utf-8"} if text else {}))
        try:
            yield f
            f.flush()
        finally:
            f.close()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False, need_bytes: int = 0) -> Iterator[Path]:
    """For writers that want a file name (gguf's writer, a package's assembler): they write the yielded
    temporary path, which becomes `path` when the block ends."""
    with _pending(path, force, need_bytes) as p:
        yield p.tmp


def write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    with atomic_file(path, force, need_bytes=len(data)) as f:
        f.write(data)
    return output_path(path)


def write_text(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), force)
