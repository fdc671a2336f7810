"""lowbit devices: the device catalog, with the memory each kind holds back (an estimate, named)."""

from __future__ import annotations

import argparse

from lowbit.commands._common import add_wide
from lowbit.devices import format_bytes, listing, reserve_rules
from lowbit.report.render import Table, print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("phone", "apple", "gpu", "cpu"), help="only devices of this kind")
    add_wide(p, "the aliases of each device")
    p.add_argument("--format", default="table", choices=("table", "json"), help="output format (default table)")


def run(args: argparse.Namespace) -> int:
    rows = [r for r in listing() if not args.kind or r["kind"] == args.kind]
    if args.format == "json":
        print_json({"devices": rows, "reserve": reserve_rules()})
        return 0
    t = Table("Devices (vendor memory is exact; usable memory is an estimate, see the notes)",
              ["name", "kind", "memory", "usable", "label"] + (["aliases"] if args.wide else []), right_align_from=2)
    t.left_from = 4  # the label (and aliases) are text
    for r in rows:
        t.add(r["name"], r["kind"], format_bytes(r["memory_bytes"]), format_bytes(r["usable_bytes"]), r["label"],
              *([", ".join(r["aliases"])] if args.wide else []))
    t.caption = "\n".join(f"{kind}: {rule['why']}" for kind, rule in reserve_rules().items())
    t.render("table")
    return 0
