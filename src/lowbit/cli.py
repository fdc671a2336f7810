"""The `lowbit` command: a thin shell over the Python API.

Each subcommand lives in its own module exposing `configure(parser)` and `run(args) -> int`, imported
only when that subcommand is named, so one command never pays for another's imports (nor for torch).
Bad input of any kind (LowbitError) becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from lowbit import __version__
from lowbit.errors import LowbitError
from lowbit.printable import printable

# Heavy dependencies that only some commands need, and the extra that installs each.
EXTRAS = {"torch": "eval", "transformers": "eval", "matplotlib": "eval", "safetensors": "eval", "triton": "test"}

# (command words, module, one-line help). Two words make a group (`lowbit eval kv`).
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("simulate",), "lowbit.commands.simulate", "the Qwen3.5 family (or any models) under two or more scenarios"),
    (("plan",), "lowbit.commands.plan", "one model, tensor by tensor, under one scenario"),
    (("formats",), "lowbit.commands.formats", "every weight type, mix and KV-cache format"),
    (("fit",), "lowbit.commands.fit", "will it fit on a device; largest context; best format; offload"),
    (("devices",), "lowbit.commands.devices", "the device catalog"),
    (("models",), "lowbit.commands.models", "every model name the commands take, and what each is for"),
    (("quantize",), "lowbit.commands.quantize", "quantize a GGUF file (Q1_0, ternary, ...) and write a new GGUF"),
    (("inspect",), "lowbit.commands.inspect", "read a GGUF file: metadata, tensor types and bytes"),
    (("eval", "distortion"), "lowbit.commands.eval_distortion", "TurboQuant distortion against the paper"),
    (("eval", "kv"), "lowbit.commands.eval_kv", "KV-cache format quality on a real model"),
    (("eval", "weights"), "lowbit.commands.eval_weights", "weight format quality on a real model"),
    (("report",), "lowbit.commands.report", "the HTML report"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, status 2
        self.exit(2, f"lowbit: error: {printable(message)}\n")

    def _get_values(self, action, arg_strings):
        # argparse before Python 3.12.7 drops "--" given as a value (--output=--), leaving a list where a string
        # belongs, unchecked by the option's type; the value "--" is taken as written instead
        if action.nargs is None and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: every command is listed, only the one argv names is configured (imported);
    with no argv, all of them are."""
    parser = _Parser(prog="lowbit", description="Exact memory simulation for low-bit LLMs (weights, KV cache, state).")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module, help_text in COMMANDS:
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} subcommands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if argv is None or tuple(argv[: len(words)]) == words:
            importlib.import_module(module).configure(p)
    return parser


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: an output being written is removed, not left half-done


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while the command is being set up, not only while it runs
        return 130


def _main(argv: list[str] | None) -> int:
    argv = (sys.argv[1:] if argv is None else argv) or ["simulate"]
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or argparse's one-line error (already printed)
        return int(e.code or 0)
    module = getattr(args, "_module", None)
    if module is None:  # a group named without its subcommand (`lowbit eval`)
        names = ", ".join(w[1] for w, _, _ in COMMANDS if w[0] == args.command)
        print(f"lowbit: error: `lowbit {args.command}` needs a subcommand: {names}", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(module).run(args) or 0)
    except LowbitError as e:
        print(f"lowbit: error: {printable(e)}", file=sys.stderr)  # one line, whatever a file name holds
        return 2
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if missing not in EXTRAS:
            raise
        words = " ".join(w for w in (args.command, getattr(args, "subcommand", None)) if w)
        print(f"lowbit: error: `lowbit {words}` needs {missing}; install it with: "
              f"pip install -e '.[{EXTRAS[missing]}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
