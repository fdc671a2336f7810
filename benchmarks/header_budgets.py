"""What hostile GGUF headers cost the bounded header reader: CPU seconds and peak memory, one fresh process each.

    python benchmarks/header_budgets.py                      # lowbit's reader
    git show 7ed9710:src/lowbit/models/gguf_header.py > /tmp/old_reader.py
    python benchmarks/header_budgets.py --reader /tmp/old_reader.py   # an older reader, for comparison

Each header stays inside the per-item limits (arrays of at most 4,096 items, names within the string limit)
and attacks the total instead. Printed per header: the outcome, CPU seconds, the growth of the process's peak
resident memory (which includes the header's mapped pages) and the Python heap's peak (tracemalloc, a second read).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
U32, STRING, ARRAY = 4, 8, 9

_READ = """
import importlib.util, json, resource, sys, tracemalloc
from pathlib import Path
spec = importlib.util.spec_from_file_location("reader_under_test", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
path = Path(sys.argv[2])

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

def read():
    try:
        mod._read_header.__wrapped__(path, path.stat().st_size, 0)
        return "ok"
    except Exception as e:
        return f"{type(e).__name__}, a {len(str(e)):,}-character message"

h0, r0 = hwm(), resource.getrusage(resource.RUSAGE_SELF)
result = read()
r1, h1 = resource.getrusage(resource.RUSAGE_SELF), hwm()
tracemalloc.start()
read()
heap = tracemalloc.get_traced_memory()[1]
print(json.dumps({"result": result, "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                  "rss": h1 - h0, "heap": heap}))
"""


def gguf_start(n_tensors: int, n_kv: int) -> bytes:
    return struct.pack("<IIQQ", 0x46554747, 3, n_tensors, n_kv)


def gguf_key(name: str) -> bytes:
    raw = name.encode()
    return struct.pack("<Q", len(raw)) + raw


def arch_kv() -> bytes:
    return gguf_key("general.architecture") + struct.pack("<I", STRING) + gguf_key("llama")


def write_many_arrays(path: Path, header_bytes: int, item_type: int, per_array: int = 4096) -> int:
    """A header of arrays of `per_array` items each (inside every per-array limit) filling `header_bytes`;
    returns how many arrays."""
    item = struct.pack("<I", 7) if item_type == U32 else struct.pack("<Q", 0)  # a u32, or an empty string
    array = struct.pack("<IQ", item_type, per_array) + item * per_array
    n = header_bytes // (len(array) + 16)
    with open(path, "wb") as f:
        f.write(gguf_start(0, n + 1) + arch_kv())
        for i in range(n):
            f.write(gguf_key(f"k{i:07d}") + struct.pack("<I", ARRAY) + array)
    return n


def many_arrays(path: Path, header_bytes: int, item_type: int, per_array: int = 4096) -> str:
    n = write_many_arrays(path, header_bytes, item_type, per_array)
    kind = "u32" if item_type == U32 else "empty strings"
    return f"{header_bytes >> 20} MiB: {n:,} arrays of {per_array:,} {kind}"


def long_name(path: Path) -> str:
    with open(path, "wb") as f:
        f.write(gguf_start(1, 1) + arch_kv() + struct.pack("<Q", 1 << 26))
        f.truncate(f.tell() + (1 << 26) + 64)  # sparse: the name's 64 MiB are there, as zeros
    return "one tensor-name length of 2^26, the bytes present"


def many_tensors(path: Path, n: int = 131_072, name_len: int = 250) -> str:
    """As many tensor infos as the reader takes, each with a long name: the most Python objects a header can buy."""
    with open(path, "wb") as f:
        f.write(gguf_start(n, 1) + arch_kv())
        for i in range(n):
            name = f"t{i:07d}".ljust(name_len, "x").encode()
            f.write(struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 32, 0, 0))  # F32 [32] at offset 0
        f.write(b"\0" * 256)
    return f"{n:,} tensor infos with {name_len}-byte names"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reader", default=str(ROOT / "src" / "lowbit" / "models" / "gguf_header.py"),
                   help="the gguf_header.py to measure (default: this tree's)")
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as d:
        cases = [(long_name, {}), (many_arrays, {"header_bytes": 16 << 20, "item_type": U32}),
                 (many_arrays, {"header_bytes": 64 << 20, "item_type": U32}),
                 (many_arrays, {"header_bytes": 16 << 20, "item_type": STRING}),
                 (many_arrays, {"header_bytes": 40 << 20, "item_type": STRING}), (many_tensors, {})]
        for i, (make, kw) in enumerate(cases):
            path = Path(d) / f"h{i}.gguf"
            label = make(path, **kw)
            r = subprocess.run([sys.executable, "-c", _READ, args.reader, str(path)], capture_output=True, text=True,
                               env=env, timeout=3600)
            if r.returncode != 0:
                print(f"{label}: the reader process failed: {r.stderr.strip().splitlines()[-1]}")
                continue
            m = json.loads(r.stdout)
            print(f"{label} ({path.stat().st_size / 1e6:,.0f} MB file): {m['result']}; {m['cpu']:.2f} CPU-s, "
                  f"peak RSS +{m['rss'] / 1e6:,.0f} MB, heap {m['heap'] / 1e6:,.1f} MB", flush=True)
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
