"""The writer under interrupts: SIGINT, SIGTERM and SIGKILL at random points of a process writing a large file,
then a second run. Afterwards the target is either the old file or the complete new one, never a mix; nothing
is left behind but, after SIGKILL, our own temporary file, which the next run removes once it is stale."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from lowbit.safe_write import STALE_SECONDS, TMP_PREFIX

ROOT = Path(__file__).resolve().parents[1]
SIZE = 24 << 20
CHUNK = 1 << 16
WRITER = f"""
import signal, sys, time
import lowbit.cli
from lowbit.safe_write import atomic_file

signal.signal(signal.SIGTERM, lowbit.cli._terminated)  # as the lowbit command installs it
target, seed, force = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
chunk = bytes([seed % 251]) * {CHUNK}
with atomic_file(target, force=force) as f:
    print("writing", flush=True)
    for i in range({SIZE // CHUNK}):
        f.write(chunk)
        if i % 4 == 0:
            time.sleep(0.002)  # spread the write over a few tenths of a second, so signals land inside it
print("done", flush=True)
"""


def _content(seed: int) -> str:
    return hashlib.sha256(bytes([seed % 251]) * SIZE).hexdigest()


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def _start(target: Path, seed: int, force: bool) -> subprocess.Popen:
    env = subprocess_env()
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(seed), "1" if force else "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_to_end(target: Path, seed: int, force: bool) -> float:
    """Seconds from the temporary file's creation to the end of the process."""
    p = _start(target, seed, force)
    assert p.stdout.readline().strip() == "writing"
    start = time.perf_counter()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "done" in out, err
    return time.perf_counter() - start


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_write_leaves_the_old_file_or_the_whole_new_one(tmp_path, sig):
    rng = random.Random()
    target = tmp_path / "out.bin"
    span = _run_to_end(tmp_path / "timing.bin", 0, False)  # how long a whole write takes here
    (tmp_path / "timing.bin").unlink()
    old = None
    outcomes = {"old": 0, "new": 0}
    for round_ in range(4):
        seed = round_ + 1
        force = old is not None
        p = _start(target, seed, force)
        assert p.stdout.readline().strip() == "writing"  # the temporary file exists now
        delay = rng.uniform(0, span * 1.1)  # anywhere in the write, the fsync or the rename
        time.sleep(delay)
        p.send_signal(sig)
        p.communicate(timeout=60)
        where = f"{signal.Signals(sig).name} after {delay:.3f} s (round {round_}, exit {p.returncode})"
        got = _digest(target)
        if got == _content(seed):
            outcomes["new"] += 1
            old = seed
        else:
            assert got == (None if old is None else _content(old)), f"{where}: the target is neither old nor new"
            outcomes["old"] += 1
        left = _leftovers(tmp_path)
        if sig != signal.SIGKILL:  # Python unwinds: the writer removes its own temporary file
            assert left == [], f"{where}: left {left}"
            assert p.returncode in (0, -sig, 128 + sig, 130, 1), where
        else:
            assert len(left) <= 1, f"{where}: left {left}"
            for leftover in left:  # an hour later, the next run into this folder removes it
                stale = time.time() - STALE_SECONDS - 60
                os.utime(leftover, (stale, stale))
        _run_to_end(target, 100 + round_, force=True)  # the second run
        assert _digest(target) == _content(100 + round_) and _leftovers(tmp_path) == [], where
        old = 100 + round_
    print(f"\n{signal.Signals(sig).name}: {outcomes}")


def test_quantize_interrupted_keeps_the_old_output(tmp_path, write_tiny_gguf):
    """The command itself (gguf's writer through the safe writer): Ctrl-C mid-quantization, then a rerun."""
    import numpy as np
    import gguf

    src = tmp_path / "big.gguf"  # one 32 MB tensor: long enough to be interrupted while it is written
    w = gguf.GGUFWriter(str(src), "llama")
    for key, value in [("block_count", 1), ("context_length", 256), ("embedding_length", 512),
                       ("feed_forward_length", 1024), ("attention.head_count", 8)]:
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32("llama.vocab_size", 16384)
    w.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal((16384, 512), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(512, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "q.gguf"
    env = subprocess_env()
    cmd = [sys.executable, "-m", "lowbit.cli", "quantize", str(src), "--to", "Q8_0", "-o", str(out), "--force",
           "--pure"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if first.returncode != 0:
        pytest.skip(f"this synthetic model does not quantize here: {first.stderr.strip()}")
    before = _digest(out)
    rng = random.Random()
    for _ in range(3):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not _leftovers(tmp_path) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)  # until the temporary output exists: the quantization is under way
        delay = rng.uniform(0, 0.2)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
        # 130: our handler ran; -SIGINT: the signal came as the interpreter was exiting, after its handler was
        # gone, and Python died by the signal as Ctrl-C asks (a shell shows both as 130).
        assert p.returncode in (0, 130, -signal.SIGINT) and "Traceback" not in err, f"exit {p.returncode}: {err}"
        assert _digest(out) == before and _leftovers(tmp_path) == [], f"SIGINT {delay:.3f} s into the write: {err}"
