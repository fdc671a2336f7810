"""Fused TurboQuant store kernel (Triton): rotate, normalize, quantize, pack, write norms.

One program takes BLOCK_T head vectors; per 128-value block it
- computes the norm (float32, as the CPU reference) and zeroes blocks holding NaN/Inf (their norm is NaN);
- rotates: randomized Hadamard as (x∘s) @ H on tensor cores. H is ±1, so for bf16/fp16 input the
  products are exact and only the float32 accumulation rounds; float32 input (and QR rotations) use
  3xTF32, about float32 accuracy;
- picks the Lloyd-Max index as the number of thresholds below y (= torch.bucketize, right=False);
- with norm correction stores ‖x‖/‖c[idx]‖, as the CPU reference;
- packs indices as the CPU packer does (`lowbit.quant.packing`: a little-endian bitstream, so every
  8 codes fill exactly `bits` bytes) and writes the fp16 norm after them (`TurboLayout.fields`).

Bit-identical to `TurboQuant.quantize` except where float32 rounding decides: a value within a few ulp
of a threshold, or a norm within a few ulp of an fp16 rounding midpoint (the two sides sum in a
different order). tests/test_kernels.py checks that every difference is such a tie.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lowbit.kernels import _interpret

from lowbit.kernels.params import TurboParams
from lowbit.kernels.turbo_attention import hadamard_tile

_interpret.apply()

_NAN16 = tl.constexpr(0x7E00)  # the fp16 NaN torch writes (CPU reference), not the GPU's canonical 0x7FFF


@triton.jit
def _store_kernel(X, OUT, SIGNS, ROT, CENT, THR, n_rows, stride_x, post_scale,
                  BLK: tl.constexpr, NBLK: tl.constexpr, BITS: tl.constexpr, VB: tl.constexpr,
                  BB: tl.constexpr, NC: tl.constexpr, HADAMARD: tl.constexpr, DOT_NATIVE: tl.constexpr,
                  BLOCK_T: tl.constexpr):
    cols = tl.arange(0, BLK)
    if HADAMARD:  # H built once per program, in registers
        mat = hadamard_tile(BLK)
        sg = tl.load(SIGNS + cols)
    else:
        mat = tl.load(ROT + cols[None, :] * BLK + cols[:, None])  # Rᵀ: [k, i] = rot[i, k]
        sg = tl.full([BLK], 1.0, tl.float32)
    # Persistent: each program walks row tiles pid, pid + nprog, ...
    for tile in range(tl.program_id(0), tl.cdiv(n_rows, BLOCK_T), tl.num_programs(0)):
        _store_tile(X, OUT, sg, mat, CENT, THR, n_rows, stride_x,
                    post_scale, tile, BLK, NBLK, BITS, VB, BB, NC, HADAMARD, DOT_NATIVE, BLOCK_T)


@triton.jit
def _store_tile(X, OUT, sg, mat, CENT, THR, n_rows, stride_x, post_scale, tile, BLK: tl.constexpr,
                NBLK: tl.constexpr, BITS: tl.constexpr, VB: tl.constexpr, BB: tl.constexpr, NC: tl.constexpr,
                HADAMARD: tl.constexpr, DOT_NATIVE: tl.constexpr, BLOCK_T: tl.constexpr):
    rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLK)
    G: tl.constexpr = BLK // 8
    grp = tl.arange(0, G)
    shifts = tl.arange(0, 8) * BITS
    TINY: tl.constexpr = 1.1754943508222875e-38  # torch.finfo(float32).tiny, the reference's clamp
    for j in tl.static_range(NBLK):
        x = tl.load(X + rows64[:, None] * stride_x + j * BLK + cols[None, :], mask=rmask[:, None], other=0.0)
        xf = x.to(tl.float32)
        bad = (xf != xf) | (tl.abs(xf) == float("inf"))
        row_bad = tl.max(bad.to(tl.int32), axis=1) > 0
        xf = tl.where(row_bad[:, None], 0.0, xf)
        norm = tl.sqrt_rn(tl.sum(xf * xf, axis=1))
        safe = tl.maximum(norm, TINY)
        if HADAMARD:
            xs = xf * sg[None, :]
            if DOT_NATIVE:  # bf16/fp16 values times ±1: exact products
                y = tl.dot(xs.to(x.dtype), mat.to(x.dtype))
            else:
                y = tl.dot(xs, mat, input_precision="tf32x3")
            y = tl.math.div_rn(y * post_scale, safe[:, None])
        else:
            u = tl.math.div_rn(xf, safe[:, None])
            y = tl.dot(u, mat, input_precision="tf32x3")
        idx = tl.zeros([BLOCK_T, BLK], dtype=tl.int32)
        for k in tl.static_range(2**BITS - 1):
            idx += (y > tl.load(THR + k)).to(tl.int32)
        stored = norm
        if NC:
            c = tl.load(CENT + idx)
            cn = tl.sqrt_rn(tl.sum(c * c, axis=1))
            stored = tl.math.div_rn(norm, tl.maximum(cn, TINY))
        n16 = stored.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        n16 = tl.where(row_bad, _NAN16, n16)
        word = tl.sum(tl.reshape(idx, [BLOCK_T, G, 8]) << shifts[None, None, :], axis=2)  # disjoint bits
        base = OUT + rows64 * VB + j * BB
        for i in tl.static_range(BITS):
            tl.store(base[:, None] + grp[None, :] * BITS + i, ((word >> (8 * i)) & 0xFF).to(tl.uint8),
                     mask=rmask[:, None])
        nb = base + BLK * BITS // 8
        tl.store(nb, (n16 & 0xFF).to(tl.uint8), mask=rmask)
        tl.store(nb + 1, (n16 >> 8).to(tl.uint8), mask=rmask)


def turbo_store(p: TurboParams, x: torch.Tensor, out: torch.Tensor | None = None, block_t: int = 16,
                programs: int | None = None) -> torch.Tensor:
    """Quantize head vectors x [..., head_dim] to packed uint8 [..., vector_bytes] (into `out` if given)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, p.head_dim)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n = x2.shape[0]
    if out is None:
        out = torch.empty(*lead, p.vector_bytes, dtype=torch.uint8, device=x.device)
    o2 = out.view(-1, p.vector_bytes)
    assert o2.is_contiguous() and o2.shape[0] == n
    if n == 0:
        return out
    # The interpreter keeps bf16 as raw uint16 and cannot dot it: there bf16 takes the float32 path.
    native = p.hadamard and (x2.dtype == torch.float16 or (x2.dtype == torch.bfloat16 and not _interpret.INTERPRET))
    tiles = triton.cdiv(n, block_t)
    if programs is None:
        programs = tiles if x.device.type != "cuda" else min(tiles, 8 * _sms(x.device))
    _store_kernel[(programs,)](
        x2, o2, p.signs if p.hadamard else p.centroids, p.rot, p.centroids,
        p.thresholds, n, x2.stride(0), p.block ** -0.5,
        BLK=p.block, NBLK=p.n_blocks, BITS=p.bits, VB=p.vector_bytes, BB=p.block_bytes, NC=p.norm_correction,
        HADAMARD=p.hadamard, DOT_NATIVE=native, BLOCK_T=block_t, num_warps=4,
    )
    return out


_SMS: dict = {}


def _sms(device) -> int:
    key = str(device)
    if key not in _SMS:
        _SMS[key] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[key]
