"""lowbit report: the HTML report (summary, family, KV against context, audit, measured results)."""

from __future__ import annotations

import argparse

from lowbit.commands._common import count
from lowbit.printable import printable
from lowbit.report.html import build
from lowbit.report.render import unit


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="lowbit-report.html", help="HTML file to write (default lowbit-report.html)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--context", type=count, default=262_144,
                   help="tokens per sequence for the family section (default 262144; suffix k = 1024)")
    p.add_argument("--units", default="GB", help="GB, GiB, MB or MiB (default GB)")


def run(args: argparse.Namespace) -> int:
    units = unit(args.units)
    print(printable(build(args.output, units, args.context, args.force)))
    return 0
