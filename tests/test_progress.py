"""Progress on long work: bars on stderr only when it is a terminal, never inside JSON; measured results
printed beside their baseline."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from lowbit import progress
from lowbit.cli import main
from lowbit.report import render


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal, keeping what is written to it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def streams(monkeypatch, capsys):
    """stdout through capsys; stderr a plain buffer, or a terminal after tty(). Call start() or tty() in the
    test itself: pytest puts its own capture back on sys.stderr when the test's call begins."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")

    class Streams:
        stderr = io.StringIO()

        @staticmethod
        def start(tty: bool = False):
            Streams.stderr = FakeTTY() if tty else io.StringIO()
            monkeypatch.setattr(sys, "stderr", Streams.stderr)

        @staticmethod
        def tty():
            Streams.start(tty=True)

        @staticmethod
        def stdout() -> str:
            return capsys.readouterr().out

    return Streams


def _run_bar(description: str, enabled: bool = True) -> None:
    bar, task = progress.progress_bar(enabled, description, 3, unit="tensors")
    with bar:
        for _ in range(3):
            bar.advance(task)


def test_a_bar_is_drawn_on_a_terminal_only(streams):
    streams.start()
    _run_bar("not a terminal")
    assert streams.stderr.getvalue() == "" and streams.stdout() == ""
    streams.tty()
    _run_bar("on a terminal")
    assert "on a terminal" in streams.stderr.getvalue() and "tensors" in streams.stderr.getvalue()
    assert streams.stdout() == ""


def test_disabled_and_quiet_bars_draw_nothing(streams):
    streams.tty()
    _run_bar("disabled", enabled=False)
    with progress.quiet():
        _run_bar("quiet")
        with progress.step(True, "a step"):
            pass
    assert streams.stderr.getvalue() == ""
    _run_bar("after quiet")  # quiet() ends with its block
    assert "after quiet" in streams.stderr.getvalue()


def test_progress_false_silences_the_bars_of_everything_called(streams):
    @progress.honours_progress
    def outer(progress: bool = True):
        _run_bar("nested")  # a loader's bar, which does not take the flag itself

    streams.tty()
    outer(progress=False)
    outer(False)
    assert streams.stderr.getvalue() == ""
    outer()
    assert "nested" in streams.stderr.getvalue()


def _local(name: str):
    from lowbit.errors import LowbitError
    from lowbit.models.local import model_path

    try:
        return model_path(name)
    except LowbitError as e:
        pytest.skip(f"{name} not available: {e}")


def test_quantize_shows_reading_and_tensors_on_a_terminal_and_keeps_json_clean(streams, tmp_path):
    path = _local("smollm2-135m")
    streams.tty()
    assert main(["quantize", "smollm2-135m", "--to", "Q8_0", "-o", str(tmp_path / "q8.gguf"), "--format", "json"]) == 0
    summary = json.loads(streams.stdout())  # nothing but the JSON on stdout
    err = streams.stderr.getvalue()
    assert f"reading {path.name}" in err and "KiB of metadata" in err
    assert "quantize Q8_0" in err and f"/{sum(r['tensors'] for r in summary['types'].values())}" in err
    assert "tensors" in err and "tokens" not in err  # the unit of a quantization is the tensor


def test_quantize_draws_nothing_when_stderr_is_not_a_terminal(streams, tmp_path):
    _local("smollm2-135m")
    streams.start()
    assert main(["quantize", "smollm2-135m", "--to", "Q8_0", "-o", str(tmp_path / "q8.gguf"), "--format", "json"]) == 0
    json.loads(streams.stdout())
    assert streams.stderr.getvalue() == ""


def test_eval_weights_shows_its_steps_on_a_terminal(streams):
    pytest.importorskip("transformers")
    _local("smollm2-135m")
    streams.tty()
    argv = ["eval", "weights", "--model", "smollm2-135m", "--weights", "Q4_0", "--tokens", "64", "--context", "32",
            "--format", "json"]
    assert main(argv) == 0
    row = json.loads(streams.stdout())
    err = streams.stderr.getvalue()
    assert row["weights"] == "Q4_0"
    assert "quantize Q4_0" in err and "tensors" in err  # per tensor
    n = row["tokens"]  # the evaluation windows, in scored tokens (the reference may be cached by then)
    assert re.search(rf"{n}/{n}\S* tokens", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err))


# --- measured results beside their baseline -------------------------------------------------------------------


def _table(streams, monkeypatch, argv: list[str], width: int = 80) -> list[str]:
    streams.start()
    monkeypatch.setattr(render, "_is_terminal", lambda out: out is sys.stdout)
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(argv) == 0
    lines = streams.stdout().splitlines()
    assert [line for line in lines if len(line) > width] == []
    return lines


def _row(lines: list[str], first: str) -> list[str]:
    row = [line for line in lines if line.startswith(first)]
    assert len(row) == 1, (first, lines)
    return re.split(r"\s{2,}", row[0].strip())


def test_eval_kv_prints_the_f16_baseline_row(streams, monkeypatch):
    pytest.importorskip("transformers")
    _local("smollm2-135m")
    lines = _table(streams, monkeypatch, ["eval", "kv", "--model", "smollm2-135m", "--kv", "q4_0", "--tokens", "96",
                                          "--context", "96", "--chunk", "24", "--no-niah"])
    base, fmt = _row(lines, "f16/f16 (baseline)"), _row(lines, "q4_0/q4_0")
    assert base[1:] == [base[1], base[2], "1.000", "0", "1.0000", "-"] and float(base[1]) == 16
    ppl_base, ppl, ratio = float(base[2]), float(fmt[2]), float(fmt[3])
    assert ratio == pytest.approx(ppl / ppl_base, abs=6e-4)
    assert float(fmt[1]) < 16 and float(fmt[4]) > 0  # a 4-bit cache: fewer bits, some divergence


def test_eval_weights_prints_the_stored_baseline_and_the_ratio(streams, monkeypatch):
    pytest.importorskip("transformers")
    _local("smollm2-135m")
    lines = _table(streams, monkeypatch, ["eval", "weights", "--model", "smollm2-135m", "--weights", "Q4_0",
                                          "--tokens", "64", "--context", "32"])
    base, q4 = _row(lines, "stored"), _row(lines, "Q4_0")
    assert base[1] == "(baseline)" and base[6:] == ["1.000", "0", "1.000"]
    ppl_base, ppl, ratio = float(base[5]), float(q4[5].replace(",", "")), float(q4[6])
    assert ratio == pytest.approx(ppl / ppl_base, rel=2e-3)
    assert float(q4[3]) < float(base[3])  # Q4_0 stores fewer bits than SmolLM2's Q4_1 + Q8_0 embedding
