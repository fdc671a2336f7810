"""Output helpers shared by the commands: byte units, and one table model rendered four ways.

The plain-text table sizes itself to the terminal it prints to (the COLUMNS variable, else the
terminal's own width): a cell that does not fit wraps at spaces only, so a number is never split;
a table whose shortest layout is still too wide prints one block per row instead. Output that is
not a terminal (a pipe, a file) is never wrapped. A no-break space (NBSP) inside a cell keeps a
label with its value on one line; it prints as a plain space.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import re
from dataclasses import dataclass, field

from lowbit.errors import LowbitError
from lowbit.printable import printable

UNITS = {"GB": 10**9, "GiB": 2**30, "MB": 10**6, "MiB": 2**20}
NBSP = "\u00a0"
GAP = 2  # spaces between columns
MIN_WIDTH = 20  # narrower terminals are treated as this wide


def unit(name: str) -> str:
    for u in UNITS:
        if u.lower() == name.lower():
            return u
    raise LowbitError(f"unknown unit {name!r}; use one of {', '.join(UNITS)}")


def fmt_bytes(n: int, units: str = "GB", digits: int = 2) -> str:
    return f"{n / UNITS[units]:,.{digits}f}"


def _is_terminal(out) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def terminal_width(out) -> int | None:
    """Columns available on the terminal `out` writes to, or None when it is not a terminal."""
    if not _is_terminal(out):
        return None
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return max(MIN_WIDTH, int(env))
    try:
        return max(MIN_WIDTH, os.get_terminal_size(out.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        return 80


def _plain(text: str) -> str:
    return text.replace(NBSP, " ")


def _pieces(word: str, width: int) -> list[str]:
    """A word longer than the width in pieces: after a '/' where it can (a path, a URL), else every `width`."""
    out, cur = [], ""
    for part in re.split(r"(?<=/)", word):
        if cur and len(cur) + len(part) > width:
            out.append(cur)
            cur = ""
        cur += part
        while len(cur) > width:
            out.append(cur[:width])
            cur = cur[width:]
    return out + ([cur] if cur else [])


def wrap(text: str, width: int | None, hard: bool = False) -> list[str]:
    """Lines of `text` (its own newlines kept) wrapped at spaces to `width` (None: not at all).

    `hard` breaks a single word longer than the width (titles and notes: a long path or URL), after a '/'
    where it can; cells never do, so a number is never split.
    """
    out: list[str] = []
    for line in text.split("\n"):
        if width is None or len(line) <= width:
            out.append(_plain(line))
            continue
        cur = ""
        for word in line.split():
            if cur and len(cur) + 1 + len(word) <= width:
                cur += " " + word
                continue
            if cur:
                out.append(cur)
            cur = word
            if hard and len(word) > width:
                *full, cur = _pieces(word, width)
                out += full
        out.append(cur)
    return [_plain(line) for line in out] if out else [""]


def _longest_word(text: str) -> int:
    return max((len(w) for line in text.split("\n") for w in line.split(" ")), default=0)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    right_align_from: int = 1  # columns from this index on are numbers
    left_from: int = 0  # if set, columns from this index on are text again
    header: bool = True  # False: a key/value listing with no header row

    def right(self, i: int) -> bool:
        """Is column i right-aligned (a number)?"""
        return self.right_align_from <= i and not (self.left_from and i >= self.left_from)

    def add(self, *cells: object) -> None:
        # cells can hold names read from files: a control character prints as its escape, never acts on a terminal
        self.rows.append([printable(c, keep_newlines=True) for c in cells])

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("title", "caption") and isinstance(value, str):  # set at creation or later: both cleaned
            value = printable(value, keep_newlines=True)
        super().__setattr__(name, value)

    def render(self, fmt: str, out=None) -> None:
        out = out or sys.stdout
        if fmt == "table":
            out.write(self.text(terminal_width(out)))
        elif fmt == "csv":
            w = csv.writer(out, lineterminator="\n")
            w.writerow([_plain(c.replace("\n", " ")) for c in self.columns])
            w.writerows([[_plain(c) for c in r] for r in self.rows])
        elif fmt == "markdown":
            out.write(f"**{_plain(self.title)}**\n\n" if self.title else "")
            out.write("| " + " | ".join(_plain(c.replace("\n", " ")) for c in self.columns) + " |\n")
            out.write("|" + "|".join("---:" if self.right(i) else "---" for i in range(len(self.columns))) + "|\n")
            for r in self.rows:
                out.write("| " + " | ".join(_plain(c) for c in r) + " |\n")
            if self.caption:
                out.write("\n" + _plain(self.caption).replace("\n", "\n\n") + "\n\n")
        else:
            raise LowbitError(f"unknown format {fmt!r}")

    # --- plain text ---------------------------------------------------------------------------
    def text(self, width: int | None = None) -> str:
        """The table as plain text at most `width` columns wide (None: as wide as it needs, never wrapped)."""
        lines: list[str] = []
        if self.title:
            lines += wrap(self.title, width, hard=True)
        widths = self._widths(width)
        if widths is None:
            lines += self._records(width)
        else:
            lines += self._grid(widths, width is not None)
        if self.caption:
            lines += [""] + wrap(self.caption, width, hard=True)
        return "\n".join(line.rstrip() for line in lines) + "\n\n"

    def _natural(self, i: int) -> int:
        cells = ([self.columns[i]] if self.header else []) + [r[i] for r in self.rows if i < len(r)]
        return max((len(line) for c in cells for line in c.split("\n")), default=0)

    def _least(self, i: int) -> int:
        cells = ([self.columns[i]] if self.header else []) + [r[i] for r in self.rows if i < len(r)]
        return max((_longest_word(c) for c in cells), default=0)

    def _widths(self, width: int | None) -> list[int] | None:
        """Column widths that fit `width`, narrowing the widest wrappable column first; None if none do."""
        n = len(self.columns)
        widths = [self._natural(i) for i in range(n)]
        if width is None:
            return widths
        least = [self._least(i) for i in range(n)]
        room = width - GAP * (n - 1)
        while sum(widths) > room:
            candidates = [i for i in range(n) if widths[i] > least[i]]
            if not candidates:
                return None
            widest = max(candidates, key=lambda i: widths[i] - least[i] // 2)
            widths[widest] -= 1
        return widths

    def _grid(self, widths: list[int], wrapping: bool) -> list[str]:
        def row_lines(cells: list[str], bottom: bool = False) -> list[str]:
            parts = [wrap(c, widths[i] if wrapping else None) for i, c in enumerate(cells)]
            height = max((len(p) for p in parts), default=1)
            if bottom:  # header cells sit on the rule
                parts = [[""] * (height - len(p)) + p for p in parts]
            lines = []
            for k in range(height):
                pieces = []
                for i, p in enumerate(parts):
                    s = p[k] if k < len(p) else ""
                    pieces.append(s.rjust(widths[i]) if self.right(i) else s.ljust(widths[i]))
                lines.append((" " * GAP).join(pieces))
            return lines

        lines: list[str] = []
        if self.header:
            lines += row_lines(self.columns, bottom=True)
            lines.append((" " * GAP).join("-" * w for w in widths))
        for r in self.rows:
            lines += row_lines(r + [""] * (len(self.columns) - len(r)))
        return lines

    def _records(self, width: int | None) -> list[str]:
        """One block per row, `column: value`: the layout of last resort for a narrow terminal."""
        names = [_plain(c.replace("\n", " ")) for c in self.columns]
        label = max(len(c) for c in names) + 2
        lines: list[str] = []
        for r in self.rows:
            for c, v in zip(names, r):
                room = None if width is None else max(MIN_WIDTH // 2, width - label)
                vals = wrap(v, room, hard=True) or [""]
                lines.append(f"{c + ':':<{label}}{vals[0]}")
                lines += [" " * label + v2 for v2 in vals[1:]]
            lines.append("")
        return lines


def strict_json(obj: object) -> object:
    """`obj` with every non-finite float as None: JSON has no NaN or Infinity, and strict parsers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {(str(k) if isinstance(k, float) and not math.isfinite(k) else k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # numpy scalars and arrays: as Python numbers
        return strict_json(obj.tolist())
    return obj


def print_json(obj: object, out=None) -> None:
    """The one JSON printer: strict (null for NaN and infinities), ASCII-escaped (no raw control characters)."""
    json.dump(strict_json(obj), out or sys.stdout, indent=2, default=str, allow_nan=False)  # paths print as text
    (out or sys.stdout).write("\n")
