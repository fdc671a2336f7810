"""The GGUF header reader's budgets bound the work, not only the file: hostile headers that stay inside every
per-item limit cost little time and memory, and the error line names a tensor in at most a few dozen characters.

Time is the process's CPU time (resource.getrusage), memory the Python heap's peak (tracemalloc): the figures
are in docs/reliability.md."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest
from conftest import ROOT, subprocess_env

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models import gguf_header
from lowbit.models.gguf_header import read_header

# The hostile-header writers live with the benchmark that measures the same cases (one copy).
sys.path.insert(0, str(ROOT / "benchmarks"))
from header_budgets import arch_kv, gguf_key, gguf_start, write_many_arrays  # noqa: E402

U32, STRING, ARRAY = 4, 8, 9


def measured(fn):
    """(result or LowbitError, CPU seconds, peak Python heap bytes) of fn(): timed on a first run, its heap
    traced on a second (tracing every allocation slows the walk itself several times)."""
    def call():
        try:
            return fn()
        except LowbitError as e:
            return e

    before = resource.getrusage(resource.RUSAGE_SELF)
    out = call()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    gguf_header._read_header.cache_clear()
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, cpu, peak


_RSS = """
import json, resource, sys
from lowbit.errors import LowbitError
from lowbit.models.gguf_header import read_header

def hwm():  # the peak resident set of this process (ru_maxrss would carry the forking parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

before = resource.getrusage(resource.RUSAGE_SELF)
try:
    read_header(sys.argv[1])
    result = "ok"
except LowbitError as e:
    result = str(e)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"result": result, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                  "rss_after": hwm()}))
"""


def walked_in_a_process(path) -> dict:
    """Read a header in a fresh process: its CPU seconds and peak resident memory (bytes; the header's mapped
    pages count too, so against a process that read a tiny header it bounds everything the walk costs)."""
    env = subprocess_env()
    r = subprocess.run([sys.executable, "-c", _RSS, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_huge_tensor_name_is_refused_at_once_in_one_short_line(tmp_path, capsys):
    """One tensor-name length of 2^26 (a 64 MiB name is really there): refused before a byte of it is read."""
    path = tmp_path / "name.gguf"
    with open(path, "wb") as f:
        f.write(gguf_start(1, 1) + arch_kv() + struct.pack("<Q", 1 << 26))
        f.truncate(f.tell() + (1 << 26) + 64)  # sparse: the name's bytes exist, as zeros
    out, cpu, peak = measured(lambda: read_header(path))
    assert isinstance(out, LowbitError) and "tensor name of 67,108,864 bytes" in str(out)
    assert cpu < 0.5 and peak < 1 << 20
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 200


def test_error_lines_cut_long_names(tmp_path, capsys):
    name = "blk.0." + "x" * 240 + "\x1b[2J"
    raw = name.encode()
    body = arch_kv() + struct.pack("<Q", len(raw)) + raw + struct.pack("<IQIQ", 1, 32, 99, 0)  # unknown type 99
    path = tmp_path / "long.gguf"
    path.write_bytes(gguf_start(1, 1) + body + b"\0" * 64)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown ggml type 99" in err and "..." in err and len(err) < 200
    assert "\x1b" not in err


def test_a_header_of_many_small_u32_arrays_costs_little_time_and_memory(tmp_path):
    """Before the budgets, 16 MiB of such arrays took 17 s and 165 MB (8-10x the header, ~1 CPU-s per MiB)."""
    path = tmp_path / "arrays.gguf"
    n = write_many_arrays(path, 16 << 20, U32)
    out, cpu, peak = measured(lambda: read_header(path))
    assert not isinstance(out, LowbitError), out
    kept = [v for k, v in out.metadata.items() if isinstance(v, list)]
    assert sum(map(len, kept)) <= gguf_header.MAX_KEPT_ITEMS  # the rest are summaries: their length only
    assert out.metadata[f"k{n - 1:07d}.count"] == 4096
    assert cpu < 1.0 and peak < 4 << 20, (cpu, peak)  # well under the header's own 16 MiB (it was 8-10x)
    print(f"\n16 MiB header of {n} arrays of 4096 u32: {cpu:.2f} CPU-s, peak heap {peak / 1e6:.1f} MB")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS read from /proc (Linux)")
@pytest.mark.parametrize("mib", [16, 40])
def test_strings_are_walked_within_a_budget_in_time_and_memory(tmp_path, mib):
    """Strings cannot be skipped in O(1): 16 MiB of empty ones (2 million) are walked, 40 MiB (5.2 million,
    over MAX_ITEMS) are refused at the budget, not walked to the end."""
    path = tmp_path / "strings.gguf"
    n = write_many_arrays(path, mib << 20, STRING)
    r = walked_in_a_process(path)
    (tmp_path / "tiny.gguf").write_bytes(gguf_start(0, 1) + arch_kv())
    base = walked_in_a_process(tmp_path / "tiny.gguf")
    r["rss"] = r["rss_after"] - base["rss_after"]
    if n * 4096 <= gguf_header.MAX_ITEMS:
        assert r["result"] == "ok", r
    else:
        assert "array items" in r["result"], r
    assert r["cpu"] < 2.0, r
    assert r["rss"] < gguf_header.MAX_ITEMS * 8 + (8 << 20), r  # the strings walked (8 bytes each, mapped), a few MB
    print(f"\n{mib} MiB header of {n * 4096 / 1e6:.1f} M strings: {r['result'][:20]}, {r['cpu']:.2f} CPU-s, "
          f"peak RSS +{r['rss'] / 1e6:.1f} MB")


def test_nested_arrays_and_decoded_text_are_budgeted(tmp_path, monkeypatch):
    # arrays of arrays: kept items past the budget are refused (an array of arrays cannot be summarized)
    outer = struct.pack("<IQ", ARRAY, 4000) + struct.pack("<IQ", U32, 0) * 4000  # 4,000 empty arrays
    path = tmp_path / "nested.gguf"
    path.write_bytes(gguf_start(0, 18) + arch_kv() + b"".join(gguf_key(f"k{i}") + struct.pack("<I", ARRAY) + outer
                                                         for i in range(17)))  # 68,000 kept items > 65,536
    with pytest.raises(LowbitError, match="nested array items"):
        read_header(path)
    # text: every decoded byte (keys, names, values) counts against one total
    monkeypatch.setattr(gguf_header, "MAX_TEXT", 1 << 20)
    value = b"v" * (300 << 10)
    body = b"".join(gguf_key(f"s{i}") + struct.pack("<I", STRING) + struct.pack("<Q", len(value)) + value for i in range(4))
    path = tmp_path / "text.gguf"
    path.write_bytes(gguf_start(0, 5) + arch_kv() + body)
    with pytest.raises(LowbitError, match="bytes of text"):
        read_header(path)


def test_declared_counts_and_key_lengths_are_bounded(tmp_path):
    cases = {
        gguf_start(gguf_header.MAX_TENSORS + 1, 0): "implausible",
        gguf_start(0, gguf_header.MAX_KV + 1): "implausible",
        gguf_start(0, 1) + struct.pack("<Q", gguf_header.MAX_KEY + 1): "metadata key",
        gguf_start(0, 1) + gguf_key("k") + struct.pack("<IIQ", ARRAY, U32, gguf_header.MAX_ARRAY + 1): "implausible",
        gguf_start(0, 1) + gguf_key("k") + struct.pack("<IIQ", ARRAY, STRING, 10) + struct.pack("<Q", 1 << 40): "implausible",
    }
    for i, (raw, words) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.gguf"
        path.write_bytes(raw + b"\0" * 64)
        start = time.perf_counter()
        with pytest.raises(LowbitError, match=words):
            read_header(path)
        assert time.perf_counter() - start < 0.5


def test_real_models_stay_far_inside_every_budget(smollm2_gguf):
    out, cpu, peak = measured(lambda: gguf_header._read_header.__wrapped__(smollm2_gguf.resolve(), 0, 0))
    assert not isinstance(out, LowbitError)
    assert out.metadata["tokenizer.ggml.tokens.count"] == 49152 and len(out.tensors) == 272
    assert cpu < 1.0 and peak < 8 << 20
