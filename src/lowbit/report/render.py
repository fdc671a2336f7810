"""Output helpers shared by the commands: byte units, and one table model rendered four ways."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field

from lowbit.errors import LowbitError

UNITS = {"GB": 10**9, "GiB": 2**30, "MB": 10**6, "MiB": 2**20}


def unit(name: str) -> str:
    for u in UNITS:
        if u.lower() == name.lower():
            return u
    raise LowbitError(f"unknown unit {name!r}; use one of {', '.join(UNITS)}")


def fmt_bytes(n: int, units: str = "GB", digits: int = 2) -> str:
    return f"{n / UNITS[units]:,.{digits}f}"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    right_align_from: int = 1  # columns from this index on are numbers
    width: int = 0  # terminal width for rich; 0 = from the column count

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self, fmt: str, out=None) -> None:
        out = out or sys.stdout
        if fmt == "table":
            from rich.console import Console
            from rich.markup import escape
            from rich.table import Table as RichTable

            # cells are data, never rich markup: "[weights]" must print as written
            t = RichTable(title=escape(self.title), caption=escape(self.caption), caption_justify="left")
            for i, c in enumerate(self.columns):
                t.add_column(escape(c), justify="right" if i >= self.right_align_from else "left", overflow="fold")
            for r in self.rows:
                t.add_row(*(escape(c) for c in r))
            Console(file=out, width=self.width or max(100, min(220, 14 * len(self.columns)))).print(t)
        elif fmt == "csv":
            w = csv.writer(out, lineterminator="\n")
            w.writerow([c.replace("\n", " ") for c in self.columns])
            w.writerows(self.rows)
        elif fmt == "markdown":
            out.write(f"**{self.title}**\n\n" if self.title else "")
            out.write("| " + " | ".join(c.replace("\n", " ") for c in self.columns) + " |\n")
            out.write("|" + "|".join("---" if i < self.right_align_from else "---:" for i in range(len(self.columns))) + "|\n")
            for r in self.rows:
                out.write("| " + " | ".join(r) + " |\n")
            if self.caption:
                out.write("\n" + self.caption.replace("\n", "\n\n") + "\n\n")
        else:
            raise LowbitError(f"unknown format {fmt!r}")


def print_json(obj: object, out=None) -> None:
    json.dump(obj, out or sys.stdout, indent=2, default=str)  # paths and the like print as text
    (out or sys.stdout).write("\n")
