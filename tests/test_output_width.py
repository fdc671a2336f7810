"""Tables fit the terminal: every command's default table at 80 and 120 columns has no longer line and no
number split across lines; output that is not a terminal is never wrapped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from lowbit.cli import main
from lowbit.report import render
from lowbit.report.render import Table

NUMBER = re.compile(r"\d[\d,.]*\d|\d")  # 4.30, 1,017,118,720, 262,144, 8


def _smollm2() -> str:
    from lowbit.errors import LowbitError
    from lowbit.models.local import model_path

    try:
        return str(model_path("smollm2-135m"))
    except LowbitError as e:
        pytest.skip(f"smollm2-135m not available: {e}")


COMMANDS = [
    ["simulate"],
    ["simulate", "--quality"],
    ["simulate", "--audit"],
    ["simulate", "--models", "qwen3.5-9b", "--scenario", "a=Q8_0+f16", "--scenario", "b=Q4_K_M+q8_0",
     "--scenario", "c=Q1_0+turbo3"],
    ["plan", "qwen3.5-397b-a17b"],
    ["plan", "smollm2"],
    ["fit", "qwen3.5-122b-a10b", "--device", "rtx-4090"],
    ["fit", "--family", "qwen3.5", "--device", "m4-max-64gb"],
    ["formats"],
    ["devices"],
    ["models"],
    ["plan", "smollm2-135m"],
    ["inspect", "smollm2"],
]


def _argv(argv: list[str]) -> list[str]:
    if "smollm2-135m" in argv:
        _smollm2()  # skips when the model is not installed
    return [_smollm2() if a == "smollm2" else a for a in argv]


def _render(capsys, monkeypatch, argv: list[str], width: int | None) -> str:
    if width is None:
        monkeypatch.setattr(render, "_is_terminal", lambda out: False)
    else:
        monkeypatch.setattr(render, "_is_terminal", lambda out: True)
        monkeypatch.setenv("COLUMNS", str(width))
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("width", [80, 120])
def test_default_tables_fit_and_keep_numbers_whole(capsys, monkeypatch, argv, width):
    argv = _argv(argv)
    text = _render(capsys, monkeypatch, argv, width)
    unwrapped = _render(capsys, monkeypatch, argv, None)
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert too_long == []
    # the same numbers, each whole: a number split across two lines would count as two others
    assert Counter(NUMBER.findall(text)) == Counter(NUMBER.findall(unwrapped))


def test_default_simulate_is_one_line_per_model_at_80_columns(capsys, monkeypatch):
    data = json.loads(_render(capsys, monkeypatch, ["simulate", "--format", "json"], None))
    text = _render(capsys, monkeypatch, ["simulate"], 80)
    lines = text.splitlines()
    for model, ratio in data["ratios"].items():
        row = [line for line in lines if line.split(" ")[0] == model]
        assert len(row) == 1, model
        cells = row[0].split()
        totals = [r["total_bytes"] for r in data["rows"] if r["model"] == model]
        fits = [r["fits"][0] for r in data["rows"] if r["model"] == model]
        # model, the two totals, the ratio and where each fits: nothing wrapped to a second line
        assert cells == [model] + [f"{t / 1e9:,.2f}" for t in totals] + [f"{ratio:.2f}x"] + fits
    assert "weights: exact" in text and text.count("weights: exact") == 1  # provenance once, as a note


def test_wide_and_markdown_keep_every_column(capsys, monkeypatch):
    wide = _render(capsys, monkeypatch, ["simulate", "--wide", "--models", "qwen3.5-27b"], None)
    narrow = _render(capsys, monkeypatch, ["simulate", "--models", "qwen3.5-27b"], None)
    for column in ("weights", "state", "runtime", "fits on", "KV"):
        assert column in wide
    assert "runtime\n" not in narrow and "state " not in narrow.splitlines()[1]
    md = _render(capsys, monkeypatch, ["simulate", "--format", "markdown", "--no-fits"], None)
    assert md.splitlines()[2].startswith("| model | params | today (Q4_K_M+f16) weights | KV | state | runtime |")


def test_not_a_terminal_is_never_wrapped():
    t = Table("a title " * 30, ["name", "value"], caption="a note " * 40)
    t.add("x " * 100, "1,234,567")
    text = t.text(None)
    assert "1,234,567" in text and len(text.rstrip("\n").splitlines()) == 6  # title, header, rule, row, blank, note


def test_a_too_wide_table_falls_back_to_one_block_per_row():
    t = Table("", ["a column", "another column"], right_align_from=1)
    t.add("abcdefghijklmnopqrstuvwxyz0123456789", "9,999,999,999")
    text = t.text(30)
    assert all(len(line) <= 30 for line in text.splitlines())
    assert "9,999,999,999" in text and "a column:" in text


def test_no_break_space_keeps_a_label_with_its_value():
    t = Table("", ["claim", "exact"], right_align_from=1)
    t.add("words " * 12, f"2b{render.NBSP}3.61x, 4b{render.NBSP}4.17x, 9b{render.NBSP}3.91x")
    lines = t.text(40).splitlines()
    assert all(len(line) <= 40 for line in lines)
    for pair in ("2b 3.61x", "4b 4.17x", "9b 3.91x"):
        assert any(pair in line for line in lines), pair
    assert render.NBSP not in "".join(lines)


def test_a_real_terminal_gets_the_narrow_table():
    """`lowbit simulate` on a pseudo-terminal of 80 columns, as a person runs it."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "lowbit.cli", "simulate", "--quality"], stdout=slave,
                          stderr=subprocess.PIPE, env=env, timeout=120)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert done.returncode == 0, done.stderr
    lines = b"".join(chunks).decode().replace("\r", "").splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    assert any(line.startswith("qwen3.5-397b-a17b") for line in lines)
    piped = subprocess.run([sys.executable, "-m", "lowbit.cli", "simulate", "--wide"], capture_output=True,
                           text=True, env=env, timeout=120)
    # not a terminal: COLUMNS is not a limit, and each model stays on one line however wide
    row = [line for line in piped.stdout.splitlines() if line.startswith("qwen3.5-397b-a17b")]
    assert len(row) == 1 and len(row[0]) > 120
