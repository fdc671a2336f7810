"""The GPU unpack's inline PTX (lowbit.kernels.unpack.ASM), run on the CPU by a small emulator of the
PTX instructions it uses, must give the fp16 codebook value of every code in every position.

CI has no GPU and Triton's interpreter cannot run inline PTX, so this is where the lookup arithmetic of
the compiled path is checked bit for bit; tests/test_kernels.py checks the compiled kernels on a GPU.
"""

from __future__ import annotations

import re

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from lowbit.kernels.unpack import ASM, pairs_to_values, table_words  # noqa: E402
from lowbit.quant.packing import pack_bits  # noqa: E402
from lowbit.quant.turboquant import TurboQuant  # noqa: E402

M32 = 0xFFFFFFFF


def _prmt(a: int, b: int, c: int) -> int:
    """prmt.b32 default mode: byte i of d = byte (nibble i of c)[2:0] of {b, a}; nibble bit 3 = sign-replicate."""
    src = ((b & M32) << 32) | (a & M32)
    d = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 0xF
        byte = (src >> (8 * (sel & 7))) & 0xFF
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        d |= byte << (8 * i)
    return d


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    d = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        d |= ((lut >> idx) & 1) << bit
    return d


def run_ptx(text: str, operands: dict[int, int]) -> dict[int, int]:
    """Execute the PTX block on 32-bit values; operands maps $i -> value. Returns the registers $i."""
    regs = {f"${i}": v & M32 for i, v in operands.items()}

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", tok):
            return int(tok, 0) & M32
        raise AssertionError(f"read of unset register or bad operand {tok!r}")

    for raw in text.splitlines():
        line = raw.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg") or line.startswith("//"):
            continue
        op, rest = line.split(None, 1)
        args = [a.strip() for a in rest.split(",")]
        dst, src = args[0], [val(a) for a in args[1:]]
        if op == "prmt.b32":
            r = _prmt(*src)
        elif op == "and.b32":
            r = src[0] & src[1]
        elif op == "add.u32":
            r = src[0] + src[1]
        elif op == "mad.lo.u32":
            r = src[0] * src[1] + src[2]
        elif op == "shr.u32":
            r = src[0] >> src[1]
        elif op == "lop3.b32":
            r = _lop3(*src)
        else:
            raise AssertionError(f"emulator lacks {op}")
        regs[dst] = r & M32
    return {int(k[1:]): v for k, v in regs.items() if k.startswith("$")}


def _unit_words(codes: np.ndarray, bits: int) -> list[int]:
    """16 codes -> the `bits` little-endian 16-bit words the CPU packer writes for them."""
    packed = pack_bits(torch.tensor(codes, dtype=torch.int64), bits).numpy()
    assert packed.size == 2 * bits
    return [int(packed[2 * i]) | (int(packed[2 * i + 1]) << 8) for i in range(bits)]


@pytest.mark.parametrize("fmt", ["turbo2", "turbo3", "turbo4"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_ptx_lookup_gives_the_fp16_codebook(fmt, head_dim):
    tq = TurboQuant(fmt, head_dim, seed=3)
    bits = tq.stages[0].bits
    cent16 = tq.stages[0].centroids.to(torch.float16)
    want_bits = cent16.view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    tab = table_words(tq.stages[0].centroids)
    rng = np.random.default_rng(bits + head_dim)
    n = 1 << bits
    # every code in every one of the 16 positions, plus random units
    units = [np.roll(np.arange(16) % n, s) for s in range(16)] + [rng.integers(0, n, 16) for _ in range(40)]
    for codes in units:
        w = _unit_words(codes, bits)
        w += [w[0]] * (4 - len(w))  # unused word operands repeat word 0, as load_units passes them
        ops = {8 + i: w[i] for i in range(4)} | {12 + i: t for i, t in enumerate(tab)}
        out = run_ptx(ASM[bits], ops)
        got = []
        for i in range(8):
            got += [out[i] & 0xFFFF, out[i] >> 16]
        assert got == [int(want_bits[c]) for c in codes], (codes, got)


@triton.jit
def _pairs_kernel(O, OUT):
    i = tl.arange(0, 2)[:, None, None] * 8 + tl.arange(0, 2)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
    v = pairs_to_values(tl.load(O + i), tl.load(O + 16 + i), tl.load(O + 32 + i), tl.load(O + 48 + i),
                        tl.load(O + 64 + i), tl.load(O + 80 + i), tl.load(O + 96 + i), tl.load(O + 112 + i))
    tl.store(OUT + i[:, :, :, None] * 16 + tl.arange(0, 16)[None, None, None, :], v)


def test_pairs_to_values_keeps_code_order():
    """The compiled path's fp16 pairs come back in code order (runs under the interpreter: no PTX inside)."""
    vals = torch.randn(16, 16).to(torch.float16)  # [unit, code]
    bits = vals.view(torch.int16).to(torch.int64) & 0xFFFF
    pairs = (bits[:, 0::2] | (bits[:, 1::2] << 16))  # [unit, k]
    pairs = torch.where(pairs >= 2**31, pairs - 2**32, pairs).to(torch.int32)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.empty(16, 16, dtype=torch.float16, device=dev)
    _pairs_kernel[(1,)](pairs.t().contiguous().to(dev), out)
    assert torch.equal(out.cpu().view(torch.int16), vals.view(torch.int16))


def test_table_words_are_the_fp16_bytes():
    c = torch.tensor([-1.5, -0.25, 0.25, 1.5])
    lo0, _, _, _, hi0, _, _, _ = table_words(c)
    b = c.to(torch.float16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    assert lo0 & M32 == sum(int(v & 0xFF) << (8 * i) for i, v in enumerate(b))
    assert hi0 & M32 == sum(int(v >> 8) << (8 * i) for i, v in enumerate(b))
