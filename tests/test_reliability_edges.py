"""The hostile paths, numbers and outputs found by hand, each pinned: one error line and exit 2, quickly, in
bounded memory, and nothing written that was not asked for."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import subprocess_env

import lowbit.eval.distortion  # noqa: F401  imported before any measurement: torch's import is not the check's cost
import lowbit.eval.kv  # noqa: F401
import lowbit.eval.weights  # noqa: F401
from lowbit import safe_write
from lowbit.cli import main
from lowbit.models import hub
from lowbit.safe_write import TMP_PREFIX

ROOT = Path(__file__).resolve().parents[1]
BIG = "9" * 400


def one_line(capsys, *argv, seconds: float = 10.0) -> str:
    start = time.perf_counter()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and err.startswith("lowbit: error: "), (argv, code, err[:2000])
    assert time.perf_counter() - start < seconds, argv
    return err


@pytest.fixture
def tiny(tmp_path, write_tiny_gguf):
    return write_tiny_gguf(tmp_path / "tiny.gguf")


# --- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["plan", "qwen3.5-0.8b", "--context", BIG], ["plan", "qwen3.5-0.8b", "--sequences", BIG],
    ["simulate", "--context", BIG], ["fit", "qwen3.5-0.8b", "--device", "rtx-4090", "--context", BIG],
    ["fit", "qwen3.5-0.8b", "--device", "rtx-4090", "--users", BIG], ["fit", "qwen3.5-0.8b", "--memory", BIG + "GB"],
    ["fit", "qwen3.5-0.8b", "--memory", "1e400GB"], ["fit", "qwen3.5-0.8b", "--memory", "nanGB"],
    ["report", "--context", BIG], ["plan", "qwen3.5-0.8b", "-c", BIG],
    ["eval", "distortion", "--dim", "100000"], ["eval", "distortion", "--seed", str(2**64)],
    ["eval", "distortion", "--seed", "-1"], ["eval", "distortion", "--samples", str(10**15)],
    ["eval", "distortion", "--samples", "1e15"], ["eval", "distortion", "--dim", "2"],
    ["eval", "kv", "--niah-depths", "nan"], ["eval", "kv", "--niah-depths", "0.5,inf"],
    ["eval", "kv", "--niah-lengths", ",".join(["1024"] * 65)], ["eval", "kv", "--tokens", str(2**40)],
    ["eval", "kv", "--chunk", "0"], ["eval", "kv", "--seed", str(2**70)], ["eval", "weights", "--context", "3"],
    ["eval", "weights", "--calib-tokens", str(2**62)], ["quantize", "x.gguf", "--to", "Q8_0", "-o", "o.gguf",
                                                           "--calib-tokens", "0"],
])
def test_numbers_outside_their_range_are_one_line_before_any_work(capsys, argv):
    tracemalloc.start()
    one_line(capsys, *argv, seconds=5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20, f"{argv}: {peak} bytes"


# --- paths ---------------------------------------------------------------------------------------------------


def test_impossible_model_paths_are_one_line(capsys, tmp_path):
    os.mkfifo(tmp_path / "fifo.gguf")
    (tmp_path / "dir.gguf").mkdir()
    (tmp_path / "zero.gguf").symlink_to("/dev/zero")
    for model in ["~nosuchuser_lowbit/x.gguf", "x" * 300 + ".gguf", str(tmp_path / ("x" * 300) / "config.json"),
                  str(tmp_path / "fifo.gguf"), str(tmp_path / "dir.gguf"), str(tmp_path / "zero.gguf"), "/dev/null",
                  "a\0b.gguf", "\udcff.gguf", str(tmp_path / "loop.gguf")]:
        if model.endswith("loop.gguf"):
            (tmp_path / "loop.gguf").symlink_to(tmp_path / "loop.gguf")
        for cmd in (["plan", model], ["inspect", model], ["quantize", model, "--to", "Q8_0", "-o", str(tmp_path / "o.gguf")],
                    ["fit", model, "--device", "rtx-4090"], ["fit", model, "--device", "rtx-4090", "--weights", "stored"]):
            one_line(capsys, *cmd, seconds=5)
    assert not (tmp_path / "o.gguf").exists()


def test_config_json_that_is_a_fifo_or_dev_zero_neither_hangs_nor_fills_memory(capsys, tmp_path):
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "config.json")
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "config.json").symlink_to("/dev/zero")
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / "config.json", "wb") as f:  # sparse: 20 MB on paper, nothing on disk
        f.truncate(20 << 20)
    tracemalloc.start()
    for d in ("fifo", "zero", "big"):
        for arg in (str(tmp_path / d), str(tmp_path / d / "config.json")):
            err = one_line(capsys, "plan", arg, seconds=5)
            assert {"fifo": "a FIFO", "zero": "a character device", "big": "larger than"}[d] in err
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 << 20  # the 16 MB limit + 1 byte, once


def _shard(path: Path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _checkpoint(tmp_path: Path) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "vocab_size": 256, "intermediate_size": 128}))
    return d


@pytest.mark.parametrize("case", ["dtype-list", "dtype-dict", "nested-index", "mixed-index", "list-index",
                                  "fifo-shard", "dir-shard", "zero-index", "bool-offsets"])
def test_hostile_checkpoints_are_one_line(capsys, tmp_path, case):
    d = _checkpoint(tmp_path)
    if case == "dtype-list":
        _shard(d / "model.safetensors", {"w": {"dtype": [], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "dtype-dict":
        _shard(d / "model.safetensors", {"w": {"dtype": {}, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "bool-offsets":
        _shard(d / "model.safetensors", {"w": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}, b"\0")
    elif case == "nested-index":
        (d / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif case == "mixed-index":
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "x.safetensors", "b": 3,
                                                                                   "c": ["y"]}}))
    elif case == "list-index":
        (d / "model.safetensors.index.json").write_text("[[[[]]]]")
    elif case == "fifo-shard":
        os.mkfifo(d / "model.safetensors")
    elif case == "dir-shard":
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "sub.safetensors"}}))
        (d / "sub.safetensors").mkdir()
    elif case == "zero-index":
        (d / "model.safetensors.index.json").symlink_to("/dev/zero")
    one_line(capsys, "fit", str(d), "--device", "rtx-4090", "--weights", "stored", seconds=5)


# --- outputs --------------------------------------------------------------------------------------------------


def test_report_output_edges_are_one_line_and_touch_nothing(capsys, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "r.html.tmp").symlink_to(victim)  # the old fixed temporary name: no longer used at all
    (tmp_path / "link.html").symlink_to(victim)
    os.mkfifo(tmp_path / "fifo.html")
    for out in ["/", str(tmp_path), str(tmp_path / "link.html"), str(tmp_path / "fifo.html"),
                str(tmp_path / "nope" / "r.html"), "~nosuchuser_lowbit/r.html", str(tmp_path / ("x" * 300)),
                str(tmp_path / "victim")]:
        for force in ([], ["--force"]):
            if out == str(tmp_path / "victim") and force:
                continue  # a regular file with --force is replaced: that is what --force is for
            one_line(capsys, "report", "-o", out, *force, seconds=5)
    assert victim.read_text() == "precious" and stat.S_ISFIFO(os.lstat(tmp_path / "fifo.html").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_is_never_replaced(capsys, tmp_path, tiny):
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    one_line(capsys, "report", "-o", str(dev), "--force")
    one_line(capsys, "quantize", str(tiny), "--to", "Q8_0", "-o", str(dev), "--force")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_quantize_refuses_a_full_disk_before_any_work(capsys, tmp_path, tiny, monkeypatch):
    from lowbit.quant import weights

    calls = []
    monkeypatch.setattr(weights, "quantize", lambda *a, **k: calls.append(a) or pytest.fail("quantized anyway"))

    class Full:
        free = 10_000

    monkeypatch.setattr(safe_write.shutil, "disk_usage", lambda _: Full)
    err = one_line(capsys, "quantize", str(tiny), "--to", "Q8_0", "-o", str(tmp_path / "q.gguf"))
    assert "not enough room" in err and calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_quantize_output_mode_follows_umask_and_force_keeps_the_old_mode(tmp_path, tiny):
    out = tmp_path / "q.gguf"
    old = os.umask(0o022)
    try:
        assert main(["quantize", str(tiny), "--to", "Q8_0", "-o", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o640)
        assert main(["quantize", str(tiny), "--to", "Q4_0", "-o", str(out), "--force"]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_two_quantize_runs_to_one_path_one_wins_whole(tmp_path, tiny):
    out = tmp_path / "q.gguf"
    env = subprocess_env()
    procs = {to: subprocess.Popen([sys.executable, "-m", "lowbit.cli", "quantize", str(tiny), "--to", to, "-o", str(out),
                                   "--format", "json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for to in ("Q4_0", "Q8_0")}
    results = {to: (p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for to, p in procs.items()}
    won = [to for to, (code, _, _) in results.items() if code == 0]
    lost = [to for to, (code, _, _) in results.items() if code != 0]
    assert len(won) == 1 and len(lost) == 1, results
    code, _, err = results[lost[0]]
    assert code == 2 and err.count("\n") == 1 and ("exists" in err or "appeared" in err), err
    from lowbit.models.gguf_header import read_header

    assert {t.type_name for t in read_header(out).tensors} >= {won[0]}  # the file holds the winner, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)] == []


# --- the Hub ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://localhost:99999", "ftp://example.org", "http://",
                                      "not a url"])
def test_a_malformed_hf_endpoint_is_one_line(capsys, monkeypatch, endpoint):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    err = one_line(capsys, "fit", "--hf", "Qwen/Qwen3.5-27B", "--device", "rtx-4090", seconds=5)
    assert "HF_ENDPOINT" in err


def test_a_hub_that_never_answers_is_cut_at_the_deadline(tmp_path):
    """A server that accepts the connection and says nothing: --hf gives up after its one deadline."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # and never answer
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    code = ("import sys, lowbit.models.hub as h; h.HF_DEADLINE = 3.0; from lowbit.cli import main; "
            "sys.exit(main(['fit', '--hf', 'Qwen/Qwen3.5-27B', '--device', 'rtx-4090']))")
    env = subprocess_env(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    start = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        server.close()
    elapsed = time.perf_counter() - start
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "did not answer within 3 s" in r.stderr, r.stderr
    assert elapsed < 3.0 + 15  # the deadline plus the interpreter's start-up and imports
    assert held, "the fetch never reached the server"


def test_nothing_but_hf_touches_the_network(capsys, monkeypatch, tmp_path, tiny):
    """Offline behaviour: every other command runs with sockets forbidden."""
    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for argv in (["simulate"], ["plan", str(tiny)], ["fit", "qwen3.5-27b", "--device", "rtx-4090"], ["formats"],
                 ["devices"], ["inspect", str(tiny)], ["quantize", str(tiny), "--to", "Q8_0", "-o", str(tmp_path / "q.gguf")]):
        assert main(argv) == 0, argv
    capsys.readouterr()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(AssertionError, match="network used"):  # --hf is the one that asks
        hub.fetch_config("Qwen/Qwen3.5-27B")


# --- metadata is data -----------------------------------------------------------------------------------------


def test_metadata_prints_as_written_never_as_markup_or_terminal_codes(capsys, tmp_path, write_tiny_gguf):
    name = "[/x] [bold]b[/bold] \x1b[2J\x1b]0;pwned\x07 \u202eevil \r\n"
    path = write_tiny_gguf(tmp_path / "[red]m[bold].gguf", name=name)
    for argv in (["inspect", str(path)], ["inspect", str(path), "--tensors"], ["plan", str(path), "--tensors"],
                 ["plan", str(path), "--format", "markdown"], ["plan", str(path), "--format", "csv"]):
        assert main(argv) == 0, argv
        out, err = capsys.readouterr()
        assert "\x1b" not in out + err and "\x07" not in out and "\r" not in out and "\u202e" not in out, argv
        if argv[0] == "inspect":
            assert "[/x] [bold]b[/bold] \\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil \\r" in out  # a newline stays one
        if "csv" not in argv:  # a CSV has no title
            assert "[red]m[bold].gguf" in out
    assert main(["inspect", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metadata"]["general.name"] == name  # JSON carries the bytes exactly, escaped by JSON itself


def test_json_has_no_nan_or_infinity(capsys, tmp_path):
    import gguf

    path = tmp_path / "nan.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_key_value("general.size_label", float("nan"), gguf.GGUFValueType.FLOAT32)
    w.add_key_value("general.quantization_version", float("inf"), gguf.GGUFValueType.FLOAT64)
    w.add_tensor("t.weight", __import__("numpy").zeros(32, "float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert main(["inspect", str(path), "--format", "json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc["metadata"]["general.size_label"] is None and doc["metadata"]["general.quantization_version"] is None
