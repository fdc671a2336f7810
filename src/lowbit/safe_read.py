"""Reading what the user names: paths checked once, and reads that stay bounded whatever sits at the path.

- `input_path` turns a command-line path into a Path: `~` and `~user` expanded (an unknown user is an error,
  not a RuntimeError), NUL bytes and absurd lengths refused;
- `probe` stats it, turning "file name too long", "too many links" or "permission denied" into one line;
- `open_regular` opens without blocking (a FIFO would wait forever for a writer) and refuses anything that is
  not a regular file once open (a symlink to /dev/zero, a FIFO, a socket, a folder), so no check-then-open race;
- `read_bounded` reads at most `limit` + 1 bytes, so a huge or endless file costs `limit`, not memory.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from lowbit.errors import LowbitError

MAX_PATH = 4096  # PATH_MAX on Linux; a longer argument cannot name a file
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


def short(text: object, n: int = 80) -> str:
    """`text` as repr, cut to about n characters: names from files go into error lines, never whole."""
    r = repr(text) if isinstance(text, str) else repr(str(text))
    return r if len(r) <= n else r[: n - 3] + "..."


def input_path(text: str | os.PathLike) -> Path:
    """A path the user gave: `~` expanded, impossible strings refused with one line."""
    raw = os.fspath(text)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw:
        raise LowbitError("an empty path names no file")
    if "\0" in raw:
        raise LowbitError(f"{short(raw)} is not a path (it holds a NUL byte)")
    if len(os.fsencode(raw)) > MAX_PATH:
        raise LowbitError(f"path of {len(os.fsencode(raw))} bytes is too long (the limit is {MAX_PATH})")
    try:
        return Path(raw).expanduser()
    except (RuntimeError, KeyError):  # ~nosuchuser, or no home directory at all
        raise LowbitError(f"cannot expand {short(raw)}: no such user's home folder") from None


def probe(path: Path) -> os.stat_result | None:
    """stat(path) following links; None when nothing is there; other failures as one line."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise LowbitError(f"file name too long: {short(str(path))}") from None
        raise LowbitError(f"cannot read {short(str(path))}: {e.strerror or e}") from None
    except ValueError:  # embedded NUL from a caller that skipped input_path
        raise LowbitError(f"{short(str(path))} is not a path") from None


def kind(st: os.stat_result) -> str:
    return "a regular file" if stat.S_ISREG(st.st_mode) else _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")


def is_file(path: Path) -> bool:
    st = probe(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def is_dir(path: Path) -> bool:
    st = probe(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def require_file(path: Path, what: str = "file") -> Path:
    """The path of an existing regular file (links followed), else one line saying what is there instead."""
    st = probe(path)
    if st is None:
        raise LowbitError(f"no such {what}: {short(str(path))}")
    if not stat.S_ISREG(st.st_mode):
        raise LowbitError(f"{short(str(path))} is {kind(st)}, not a {what}")
    return path


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """Open for reading; refuse (one line) anything that is not a regular file, without ever blocking on it."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LowbitError(f"no such {what}: {short(str(p))}") from None
    except OSError as e:
        raise LowbitError(f"cannot read {short(str(p))}: {e.strerror or e}") from None
    except ValueError:
        raise LowbitError(f"{short(str(p))} is not a path") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LowbitError(f"{short(str(p))} is {kind(st)}, not a {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """All of a regular file of at most `limit` bytes; a longer one is refused after reading limit + 1 bytes."""
    with open_regular(path, what) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise LowbitError(f"cannot read {short(str(path))}: {e.strerror or e}") from None
    if len(data) > limit:
        raise LowbitError(f"{short(str(path))} is larger than {limit:,} bytes; a {what} is far smaller")
    return data
