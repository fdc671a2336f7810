"""Every option of every command, fed hostile values: exit 0 or 2, never a traceback, one stderr line on failure,
nothing printed that a terminal would act on, nothing written outside the test's folder.

The commands and their options are read from lowbit.cli.build_parser(), so a new command or flag is covered
without a new test. Values are huge, negative, non-finite, empty, long, markup, control characters, and paths
to folders, FIFOs, devices, links to /dev/zero, unknown users' homes and names too long for the filesystem.
Work that would load a real model (eval kv/weights, GPTQ calibration) or draw the report's plots is stopped
where it would start: reaching it means every argument passed validation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit.eval.calibration
import lowbit.eval.distortion
import lowbit.eval.kv
import lowbit.eval.lm
import lowbit.report.html
from lowbit.cli import build_parser, main
from lowbit.safe_write import TMP_PREFIX

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")  # \n allowed
STATS = {"cases": 0, "ok": 0, "refused": 0, "reached": 0}


class Reached(Exception):
    """Validation passed: the command got as far as the heavy work (loading a model, drawing plots)."""


@pytest.fixture(scope="module")
def land(tmp_path_factory, write_tiny_gguf):
    """A folder of hostile things to point commands at."""
    d = tmp_path_factory.mktemp("land")
    (d / "home").mkdir()
    (d / "cwd").mkdir()
    (d / "cache").mkdir()
    (d / "dir.gguf").mkdir()
    os.mkfifo(d / "fifo.gguf")
    os.mkfifo(d / "fifo.json")
    (d / "zero.json").symlink_to("/dev/zero")
    (d / "zero.gguf").symlink_to("/dev/zero")
    (d / "zerocfg").mkdir()
    (d / "zerocfg" / "config.json").symlink_to("/dev/zero")
    (d / "fifocfg").mkdir()
    os.mkfifo(d / "fifocfg" / "config.json")
    (d / "bad.gguf").write_bytes(b"GGUF" + b"\xff" * 60)
    write_tiny_gguf(d / "tiny.gguf")
    write_tiny_gguf(d / "[red]markup[bold].gguf", name="[/x] \x1b[2J\x1b]0;pwned\x07")
    (d / "private").mkdir()  # reachable only through the link: no command line names it
    (d / "private" / "victim.txt").write_text("precious")
    (d / "link.html").symlink_to(d / "private" / "victim.txt")
    (d / "existing.html").write_text("mine")
    if os.geteuid() == 0:
        os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return d


def _paths(d: Path) -> list[str]:
    names = ["dir.gguf", "fifo.gguf", "fifo.json", "zero.json", "zero.gguf", "zerocfg", "fifocfg", "bad.gguf",
             "tiny.gguf", "[red]markup[bold].gguf", "link.html", "existing.html", "null", "cwd", "nope/x.gguf"]
    return [str(d / n) for n in names] + [
        "~nosuchuser_lowbit/x.gguf", "~/x.gguf", "~", "x" * 300 + ".gguf", str(d / ("y" * 300)), "/", "/dev/null",
        "/dev/zero", "/nonexistent/config.json", "a\0b.gguf", "\udcff.gguf", "-", "--", ".", "..", "config.json",
    ]


NUMBERS = ["0", "-0", "-1", "1", "2", "3", "4", "7", "99", "100", "128", "4096", "4097", "65536", "1000000",
           "1000001", "9" * 400, "9" * 5000, "1e15", "1e400", "-1e400", "nan", "inf", "-inf", "NaN", "Infinity",
           "2**64", "18446744073709551616", "4294967296", "-9223372036854775809", "0x10", "1_000", "1.5", " 12 ",
           "256k", "1M", "1.5M", "0.5k", "99999999999999999999999999k", "1e3", "24GB", "1e400GB", "nanGB",
           "-1GB", "0GiB", "9" * 400 + "GB", "1,0.5,nan", "1,2,3", ",", "0.1,0.5,0.9", ",".join(["1"] * 100)]
WORDS = ["", " ", "Q8_0", "Q4_K_M", "Q1_0", "TQ1_0", "IQ1_S", "f16", "q8_0", "turbo3", "turbo2.5:center", "kivi2",
         "stored", "shipped", "gptq", "ref", "rht-gptq", "json", "table", "csv", "markdown", "qwen3.5-0.8b",
         "qwen3.5", "smollm2-135m", "gemma3-270m", "rtx-4090", "phone-8gb", "vllm", "llama.cpp", "GiB", "MiB",
         "a=Q8_0+f16", "a=Q8_0+f16/turbo3", "=", "[/x]", "[bold]b[/bold]", "\x1b[2J\x1b[31mred", "a\nb", "a\rb",
         "\u202eevil", "x" * 5000, "Qwen/Qwen3.5-27B", "../../etc/passwd", "a/b", "%s%n", "{}", "$(id)"]


def _commands():
    def walk(parser, words=()):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from walk(sub, (*words, name))
                return
        yield words, parser

    return list(walk(build_parser()))


COMMANDS = _commands()


def _options(parser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


_FRESH = itertools.count()


def _base(words, d: Path) -> dict[str, str | None]:
    """A valid command line for each command: the hostile values replace or join it."""
    tiny = str(d / "tiny.gguf")
    return {
        ("plan",): {"model": "qwen3.5-0.8b"},
        ("fit",): {"model": "qwen3.5-0.8b", "device": "rtx-4090"},
        ("quantize",): {"model": tiny, "to": "Q8_0", "output": str(d / "out" / f"q{next(_FRESH)}.gguf")},
        ("inspect",): {"file": tiny},
        ("report",): {"output": str(d / "out" / "r.html")},
        ("eval", "kv"): {"model": tiny},
        ("eval", "weights"): {"model": tiny},
    }.get(tuple(words), {})


def _argv(words, parser, chosen: dict[str, str | None]) -> list[str]:
    argv, rest = list(words), []
    for a in _options(parser):
        if a.dest not in chosen:
            continue
        value = chosen[a.dest]
        if not a.option_strings:
            argv.append(value)
        elif a.nargs == 0:
            rest.append(a.option_strings[-1])
        else:
            rest.append(f"{max(a.option_strings, key=len)}={value}")  # --opt=value: the value is never an option
    return argv + rest


@pytest.fixture(scope="module")
def stubs():
    """Stop where a real model would load or the report's plots would be drawn."""

    def reached(*a, **k):
        raise Reached

    mp = pytest.MonkeyPatch()
    mp.setattr(lowbit.eval.distortion, "_measure", reached)
    mp.setattr(lowbit.eval.kv, "load_model", reached)
    mp.setattr(lowbit.eval.lm, "load_tokenizer", reached)
    mp.setattr(lowbit.eval.lm, "load_model", reached)
    mp.setattr(lowbit.eval.calibration, "calibration_hessians", reached)
    mp.setattr(lowbit.report.html, "simulate", reached)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def offline_env(land):
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(land / "home"))
    mp.setenv("LOWBIT_CACHE", str(land / "cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("COLUMNS", "100")
    mp.chdir(land / "cwd")
    (land / "out").mkdir(exist_ok=True)
    yield
    mp.undo()


def run_cli(argv: list[str]) -> tuple[int | str, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except Reached:
            code = "reached"
    return code, out.getvalue(), err.getvalue()


def check_outcome(argv, code, out, err) -> None:
    where = f"lowbit {' '.join(map(repr, argv))[:400]}"
    assert code in (0, 2, "reached"), f"{where}: exit {code}\n{err[-2000:]}"
    assert "Traceback" not in err + out, f"{where}: traceback\n{err[-2000:]}"
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("lowbit: error: "), f"{where}: stderr is not one line:\n{err[:2000]}"
    bad = UNSAFE.search(out + err)
    assert bad is None, f"{where}: printed a raw control character {bad.group()!r}"


def _no_leftovers(land: Path) -> None:
    left = [p for p in land.rglob(f"{TMP_PREFIX}*")]
    assert left == [], left
    assert (land / "private" / "victim.txt").read_text() == "precious" and (land / "link.html").is_symlink()
    assert stat.S_ISFIFO(os.lstat(land / "fifo.gguf").st_mode)
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(land / "null").st_mode)


def _new_files_in_repo() -> set[str]:
    """Untracked and ignored entries of the repository (a command writing there would add one); edits to tracked
    files are a developer's, not a command's, and are left out."""
    try:
        r = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    lines = r.stdout.decode("utf-8", "replace").splitlines()
    return {line for line in lines if line[:2] in ("??", "!!") and "__pycache__" not in line}


def test_every_option_of_every_command_takes_hostile_values(land, stubs, offline_env):
    paths = _paths(land)
    values = st.one_of(
        st.sampled_from(NUMBERS), st.sampled_from(WORDS), st.sampled_from(paths),
        st.integers(-2**80, 2**80).map(str), st.floats().map(repr), st.text(max_size=24),
    )
    before = _new_files_in_repo()
    started = time.perf_counter()

    @settings(max_examples=int(os.environ.get("LOWBIT_RELIABILITY_EXAMPLES", 1000)), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def one_case(data):
        words, parser = data.draw(st.sampled_from(COMMANDS), label="command")
        options = _options(parser)
        chosen = dict(_base(words, land))
        picked = data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=3, unique_by=lambda a: a.dest),
                           label="options")
        for a in picked:
            if a.nargs == 0:
                chosen[a.dest] = None
            elif a.choices is not None and data.draw(st.booleans(), label="valid choice"):
                chosen[a.dest] = data.draw(st.sampled_from(sorted(a.choices)), label=a.dest)
            else:
                chosen[a.dest] = data.draw(values, label=a.dest)
        argv = _argv(words, parser, chosen)
        code, out, err = run_cli(argv)
        STATS["cases"] += 1
        STATS[{0: "ok", 2: "refused", "reached": "reached"}.get(code, "other")] = \
            STATS.get({0: "ok", 2: "refused", "reached": "reached"}.get(code, "other"), 0) + 1
        check_outcome(argv, code, out, err)
        _no_leftovers(land)

    one_case()
    assert _new_files_in_repo() <= before, "a command wrote into the repository"
    seconds = time.perf_counter() - started
    print(f"\nreliability: {STATS['cases']} command lines over {len(COMMANDS)} commands in {seconds:.1f} s: "
          f"{STATS['ok']} ran, {STATS['refused']} refused with one line, {STATS['reached']} validated up to the "
          f"model load or plots; escapes: 0")
    # every command was tried, and each both accepted and refused something
    assert STATS["refused"] > 0 and STATS["ok"] + STATS["reached"] > 0


def test_every_command_accepts_its_base_line(land, stubs, offline_env):
    """The base lines the hostile values are mixed into are themselves valid (else the test proves little)."""
    for words, parser in COMMANDS:
        argv = _argv(words, parser, _base(words, land))
        code, out, err = run_cli(argv)
        check_outcome(argv, code, out, err)
        assert code in (0, "reached"), f"{argv}: {err}"
    _no_leftovers(land)


def test_a_group_without_its_subcommand_is_one_error_line(capsys):
    assert main(["eval"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "needs a subcommand" in err


def test_json_output_is_strict(land, stubs, offline_env):
    """Every --format json answer parses with a strict parser (no NaN or Infinity)."""
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in JSON output"))

    for words, parser in COMMANDS:
        if not any(a.dest == "format" and "json" in (a.choices or ()) for a in _options(parser)):
            continue
        argv = _argv(words, parser, {**_base(words, land), "format": "json"})
        code, out, err = run_cli(argv)
        if code == 0:
            strict(out)
