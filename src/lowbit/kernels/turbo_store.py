"""Fused TurboQuant store kernel (Triton): rotate, quantize, pack, write norms, in one pass over the input.

One program walks tiles of BLOCK_T head vectors (persistent grid); per 128-value block it
- rotates with one tensor-core product y = x @ M. M is the rotation with its columns permuted (below);
  for the randomized Hadamard M = diag(s)·H has ±1 entries, so for bf16/fp16 input the products are exact
  and only the float32 accumulation rounds; float32 input (and QR rotations) use 3xTF32, about float32;
- takes the norm from the same registers: ‖x‖ = ‖y‖ / sqrt(block) for bf16/fp16 input (one FMA per value,
  no second pass over x), from x itself otherwise;
- never normalizes a value: it compares y with the thresholds scaled once per row (t_k·‖y‖), which is
  the reference's y/‖y‖ > t_k up to float32 rounding. The Lloyd-Max codebooks are exactly symmetric in
  float32 (checked on the host), so the index is a branch-free binary search on |y| (b-1 compares) plus the
  sign: index = number of thresholds below y, as torch.bucketize(right=False). Other codebooks count all
  thresholds;
- with norm correction stores ‖x‖/‖c[idx]‖; ‖c[idx]‖² without per-value gathers: a per-row byte histogram
  of the magnitude index (3-bit) or selects down the search tree (2- and 4-bit);
- packs indices as the CPU packer does (`lowbit.quant.packing`: a little-endian bitstream, so every 8 codes
  fill exactly `bits` bytes) and writes the fp16 norm after them (`TurboLayout.fields`).

Why the column permutation: the tensor-core accumulator gives each thread the columns 8j + 2q + {0,1} of
its rows (q = lane % 4). Ordering M's columns so that these are the logical codes (block/4)·q + 2j + {0,1}
puts block/4 consecutive codes in each thread: packing them is a shift-and-add inside the thread, giving
(block/32)·bits bytes of 16-bit units per thread (rows are 2-byte aligned: vector_bytes is even). Stored as
they lie, those units went out one per lane of 32 different rows, and L2's partial writes bounded the kernel
(ncu: L2 62 %, DRAM 18 %); so by default (`coalesce`) each row's units are gathered within the tile and a warp
writes a row's bytes contiguously (1.2-1.7x on the H200, docs/kernels.md §R7). The permutation only changes
which thread holds which value, never a result; blocks under 64 values use the plain order and a generic
byte packer.

Rows with a non-finite ‖y‖ (NaN/Inf input, or overflow) are rare: the tile then takes a slow exact path
(the reference's order: zero the block, normalize, divide, compare) for just those rows — inside the main
loop, or (`defer`) in a second launch over the tiles the main loop flagged; their blocks
store a NaN norm with the bits torch writes on the same device (0x7E00 on CPU, the canonical 0x7FFF on
NVIDIA GPUs: `store_check.torch_nan16`), so they equal `TurboQuant.quantize` run where the kernel runs.

Diagnosis (`benchmarks/store_kernel.py --diagnose`): `turbo_store` takes overrides for SYM, FAST_PACK and
DOT_NATIVE, and an optional float32 `debug` tensor [rows, n_blocks, 4] that receives, per block, the norm
before correction, Σc[idx]², the float32 value converted to fp16, and Σy² (DEBUG is a constexpr: no cost
when unused).

Bit-identical to `TurboQuant.quantize` except where float32 rounding decides: a value within a few ulp
of a threshold, or a norm within a few ulp of an fp16 rounding midpoint (the two sides sum in a
different order). `lowbit.kernels.store_check.check_store` (used by the tests and the GPU benchmark)
checks that every difference is such a tie.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.kernels import _interpret
from lowbit.errors import LowbitError
from lowbit.kernels.params import TurboParams, cached, sm_count, store_rows
from lowbit.kernels.store_check import torch_nan16
from lowbit.quant.rotation import sylvester_hadamard

_interpret.apply()

_TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(float32).tiny, the reference's clamp


@triton.jit
def _select(p, a, b):
    return tl.where(p, a, b)


@triton.jit
def _codes(y, rs, THR, CENT, BITS: tl.constexpr, SYM: tl.constexpr, NC: tl.constexpr):
    """(indices int32, sum of c[idx]^2 per row) of y [R, BLK] against thresholds t_k * rs [R]."""
    H: tl.constexpr = 2 ** (BITS - 1)
    r = rs[:, None]
    if SYM:  # thresholds -t_{H-1} .. -t_1, 0, t_1 .. t_{H-1}: m = #{k >= 1: |y| > t_k}, sign separately
        a = tl.abs(y)
        tl.static_assert(BITS >= 2 and BITS <= 4, "store kernel: 2 to 4 bits")
        if BITS == 2:
            m = (a > tl.load(THR + H) * r).to(tl.int32)
        elif BITS == 3:
            t1 = tl.load(THR + H) * r
            t2 = tl.load(THR + H + 1) * r
            t3 = tl.load(THR + H + 2) * r
            p1 = a > t2
            m = (p1.to(tl.int32) << 1) | (a > _select(p1, t3, t1)).to(tl.int32)
        else:
            t1 = tl.load(THR + H) * r
            t2 = tl.load(THR + H + 1) * r
            t3 = tl.load(THR + H + 2) * r
            t4 = tl.load(THR + H + 3) * r
            t5 = tl.load(THR + H + 4) * r
            t6 = tl.load(THR + H + 5) * r
            t7 = tl.load(THR + H + 6) * r
            p1 = a > t4
            p2 = a > _select(p1, t6, t2)
            p3 = a > _select(p1, _select(p2, t7, t5), _select(p2, t3, t1))
            m = (p1.to(tl.int32) << 2) | (p2.to(tl.int32) << 1) | p3.to(tl.int32)
        # y > 0: index H + m; y <= 0: H - 1 - m, which is m ^ (H - 1) for m < H
        idx = m ^ _select(y > 0, H, H - 1)
        cn2 = tl.zeros(rs.shape, tl.float32)
        if NC:  # |c[idx]| = c[H + m]; which form is cheapest per value was measured in the SASS
            if BITS == 3:  # a per-row histogram of m in bytes (counts <= 128): one shift and add a value
                hist = tl.sum(1 << (m * 8), axis=1)
                for k in tl.static_range(H):
                    ck = tl.load(CENT + H + k)
                    cn2 += ((hist >> (8 * k)) & 0xFF).to(tl.float32) * (ck * ck)
            else:  # select c^2 down the same search tree
                c0 = tl.load(CENT + H)
                c1 = tl.load(CENT + H + 1)
                if BITS == 2:
                    c2 = _select(m == 1, c1 * c1, c0 * c0)
                else:
                    c2_ = tl.load(CENT + H + 2)
                    c3 = tl.load(CENT + H + 3)
                    c4 = tl.load(CENT + H + 4)
                    c5 = tl.load(CENT + H + 5)
                    c6 = tl.load(CENT + H + 6)
                    c7 = tl.load(CENT + H + 7)
                    lo = _select(p2, _select(p3, c3 * c3, c2_ * c2_), _select(p3, c1 * c1, c0 * c0))
                    hi = _select(p2, _select(p3, c7 * c7, c6 * c6), _select(p3, c5 * c5, c4 * c4))
                    c2 = _select(p1, hi, lo)
                cn2 = tl.sum(c2, axis=1)
    else:
        idx = tl.zeros(y.shape, tl.int32)
        for k in tl.static_range(2**BITS - 1):
            idx += (y > tl.load(THR + k) * r).to(tl.int32)
        cn2 = tl.zeros(rs.shape, tl.float32)
        if NC:
            c = tl.load(CENT + idx)
            cn2 = tl.sum(c * c, axis=1)
    return idx, cn2


@triton.jit
def _norm16(nrm, cn2, bad, NC: tl.constexpr, NAN16: tl.constexpr):
    """(fp16 bits of the stored norm as int32, the float32 value converted)."""
    stored = nrm
    if NC:
        stored = tl.math.div_rn(nrm, tl.maximum(tl.sqrt_rn(cn2), _TINY))
    n16 = stored.to(tl.float16).to(tl.int16, bitcast=True)
    return tl.where(bad, NAN16, n16.to(tl.int32)), stored


@triton.jit
def _debug_store(DBG, rows64, j, smask, nrm, cn2, stored, ss, NBLK: tl.constexpr):
    base = DBG + (rows64 * NBLK + j) * 4
    tl.store(base, nrm, mask=smask)
    tl.store(base + 1, cn2, mask=smask)
    tl.store(base + 2, stored, mask=smask)
    tl.store(base + 3, ss, mask=smask)


@triton.jit
def _unit(g, h: tl.constexpr, GPT: tl.constexpr, BITS: tl.constexpr, NH: tl.constexpr):
    """16-bit unit h (int16 [R, 4]) of each thread's packed codes; group g[k] holds 8·BITS bits; 0 past NH."""
    v = tl.zeros(g[0].shape, tl.int32)
    if h < NH:
        for k in tl.static_range(GPT):
            # group k's bit 0 lands at bit 8·BITS·k - 16·h of unit h
            if 8 * BITS * k - 16 * h > -8 * BITS and 8 * BITS * k - 16 * h < 16:
                if 8 * BITS * k >= 16 * h:
                    v = v | (g[k] << (8 * BITS * k - 16 * h))
                else:
                    v = v | (g[k] >> (16 * h - 8 * BITS * k))
    return (v & 0xFFFF).to(tl.int16)


@triton.jit
def _placed(rows, rpg, gstride, VB: tl.constexpr, PLACED: tl.constexpr):
    """Byte offset of each row's vector in the output (`params.store_rows`): rows · VB for a contiguous output;
    for a slice of a cache (PLACED) group · stride + token · VB, the division in int32 (a decode step's few rows)."""
    if PLACED:
        g = rows // rpg
        return g.to(tl.int64) * gstride + (rows - g * rpg).to(tl.int64) * VB
    return rows.to(tl.int64) * VB


@triton.jit
def _pack_store(idx, n16, OUT, OUT16, obytes, smask, j, BLK: tl.constexpr, BITS: tl.constexpr, VB: tl.constexpr,
                BB: tl.constexpr, BLOCK_T: tl.constexpr, FAST_PACK: tl.constexpr, COALESCE: tl.constexpr):
    """Write the codes idx [R, BLK] (in M's column order) and the fp16 norm bits n16 [R] of block j of the rows
    whose vectors start at byte offsets obytes [R] of OUT."""
    if FAST_PACK:
        # column p = 32·jh + 8·jl + 2·q + e holds code (BLK/4)·q + 8·jh + 2·jl + e, so group jh of thread q
        # (codes 8·(GPT·q + jh) ...) is the sum over (jl, e): shifts inside one thread
        GPT: tl.constexpr = BLK // 32
        NH: tl.constexpr = GPT * BITS // 2  # 16-bit units per thread and row
        c5 = tl.reshape(idx, [BLOCK_T, GPT, 4, 4, 2])
        jl = tl.arange(0, 4)[None, None, :, None, None]
        e = tl.arange(0, 2)[None, None, None, None, :]
        w = tl.sum(tl.sum(c5 << (BITS * (2 * jl + e)), axis=4), axis=2)  # [R, GPT, 4]: disjoint bits
        w = tl.permute(w, (0, 2, 1))  # [R, q, jh]
        if GPT == 2:
            g0, g1 = tl.split(w)
            g = (g0, g1)
        else:
            tl.static_assert(GPT == 4, "fast packer: blocks of 64 or 128")
            a, b = tl.split(tl.reshape(w, [BLOCK_T, 4, 2, 2]))  # jh = 2·hi + lo, split takes lo then hi
            g0, g2 = tl.split(a)
            g1, g3 = tl.split(b)
            g = (g0, g1, g2, g3)
        q = tl.arange(0, 4)
        base = OUT16 + obytes // 2 + j * (BB // 2)
        if COALESCE:
            # units [R, q, h] padded to NHP per thread, then one store of each row's BLK·BITS/16 units
            NHP: tl.constexpr = 2 if NH <= 2 else (4 if NH <= 4 else 8)
            u01 = tl.join(_unit(g, 0, GPT, BITS, NH), _unit(g, 1, GPT, BITS, NH))
            if NHP == 2:
                units = u01
            else:
                u23 = tl.join(_unit(g, 2, GPT, BITS, NH), _unit(g, 3, GPT, BITS, NH))
                if NHP == 4:
                    units = tl.reshape(tl.permute(tl.join(u01, u23), (0, 1, 3, 2)), [BLOCK_T, 4, 4])
                else:
                    u45 = tl.join(_unit(g, 4, GPT, BITS, NH), _unit(g, 5, GPT, BITS, NH))
                    u67 = tl.join(_unit(g, 6, GPT, BITS, NH), _unit(g, 7, GPT, BITS, NH))
                    units = tl.reshape(tl.permute(tl.join(tl.join(u01, u23), tl.join(u45, u67)), (0, 1, 4, 3, 2)),
                                       [BLOCK_T, 4, 8])
            # thread q's unit h sits at q·NH + h of the row: gather the row's units into that order, so the
            # store's addresses run contiguously along the lanes (Triton's layout for it: one row per warp)
            u = tl.arange(0, 4 * NHP)
            src = tl.broadcast_to(((u // NH) * NHP + u % NH)[None, :], [BLOCK_T, 4 * NHP])
            row_units = tl.gather(tl.reshape(units, [BLOCK_T, 4 * NHP]), tl.where(src < 4 * NHP, src, 0), 1)
            tl.store(base[:, None] + u[None, :], row_units, mask=smask[:, None] & (u < 4 * NH)[None, :])
        else:
            ptr = base[:, None] + q[None, :] * NH
            for h in tl.static_range(NH):
                tl.store(ptr + h, _unit(g, h, GPT, BITS, NH), mask=smask[:, None])
        tl.store(base + BLK * BITS // 16, n16.to(tl.int16), mask=smask)
    else:
        G: tl.constexpr = BLK // 8
        grp = tl.arange(0, G)
        shifts = tl.arange(0, 8) * BITS
        word = tl.sum(tl.reshape(idx, [BLOCK_T, G, 8]) << shifts[None, None, :], axis=2)  # disjoint bits
        base = OUT + obytes + j * BB
        for i in tl.static_range(BITS):
            tl.store(base[:, None] + grp[None, :] * BITS + i, ((word >> (8 * i)) & 0xFF).to(tl.uint8),
                     mask=smask[:, None])
        nb = base + BLK * BITS // 8
        tl.store(nb, (n16 & 0xFF).to(tl.uint8), mask=smask)
        tl.store(nb + 1, ((n16 >> 8) & 0xFF).to(tl.uint8), mask=smask)


@triton.jit
def _rotate(x, mat, y_scale, inv_scale2, DOT_NATIVE: tl.constexpr):
    """(y = x @ M, Σ of squares the norm comes from, ‖y‖, ‖x‖) of one block of rows."""
    if DOT_NATIVE:  # bf16/fp16 values times ±1: exact products; the norm from y (one FMA a value)
        y = tl.dot(x, mat)
        ss = tl.sum(y * y, axis=1)
        ry = tl.sqrt_rn(ss)
        nrm = tl.sqrt_rn(ss * inv_scale2)
    else:
        xf = x.to(tl.float32)
        y = tl.dot(xf, mat, input_precision="tf32x3")
        ss = tl.sum(xf * xf, axis=1)
        nrm = tl.sqrt_rn(ss)
        ry = nrm * y_scale
    return y, ss, ry, nrm


@triton.jit
def _store_kernel(X, OUT, OUT16, MAT, CENT, THR, DBG, FLAGS, n_rows, stride_x, y_scale, inv_scale2, rpg, gstride,
                  BLK: tl.constexpr, NBLK: tl.constexpr, BITS: tl.constexpr, VB: tl.constexpr, BB: tl.constexpr,
                  NC: tl.constexpr, SYM: tl.constexpr, DOT_NATIVE: tl.constexpr, FAST_PACK: tl.constexpr,
                  COALESCE: tl.constexpr, SAFE: tl.constexpr, DEFER: tl.constexpr, NAN16: tl.constexpr,
                  DEBUG: tl.constexpr, BLOCK_T: tl.constexpr, PLACED: tl.constexpr):
    """SAFE: rows with a non-finite norm take the slow exact path here. DEFER: they are left unwritten and their
    tile flagged in FLAGS (one byte a tile) for `_deferred_kernel`, so this loop carries no slow-path registers."""
    cols = tl.arange(0, BLK)
    mat = tl.load(MAT + cols[:, None] * BLK + cols[None, :])  # [k, p], loaded once per program
    for tile in range(tl.program_id(0), tl.cdiv(n_rows, BLOCK_T), tl.num_programs(0)):
        rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
        rmask = rows < n_rows
        rows64 = rows.to(tl.int64)
        obytes = _placed(rows, rpg, gstride, VB, PLACED)
        flagged = tl.zeros([BLOCK_T], tl.int32)
        for j in tl.static_range(NBLK):
            x = tl.load(X + rows64[:, None] * stride_x + j * BLK + cols[None, :], mask=rmask[:, None], other=0.0)
            y, ss, ry, nrm = _rotate(x, mat, y_scale, inv_scale2, DOT_NATIVE)
            ok = ss < float("inf")  # false for NaN too
            rs = tl.where(ry > 0, ry, 1.0)  # a zero vector compares y = 0 with the bare thresholds
            idx, cn2 = _codes(y, rs, THR, CENT, BITS, SYM, NC)
            n16, stored = _norm16(nrm, cn2, ss != ss, NC, NAN16)
            _pack_store(idx, n16, OUT, OUT16, obytes, rmask & ok, j, BLK, BITS, VB, BB, BLOCK_T, FAST_PACK, COALESCE)
            if DEBUG:
                _debug_store(DBG, rows64, j, rmask & ok, nrm, cn2, stored, ss, NBLK)
            if SAFE:
                if tl.min((ok | ~rmask).to(tl.int32)) == 0:  # rare: NaN/Inf or overflow in this tile
                    _slow_rows(x, mat, rows64, obytes, rmask & ~ok, j, OUT, OUT16, CENT, THR, DBG, y_scale, BLK, NBLK,
                               BITS, VB, BB, NC, SYM, DOT_NATIVE, FAST_PACK, COALESCE, NAN16, DEBUG, BLOCK_T)
            if DEFER:
                flagged |= (rmask & ~ok).to(tl.int32)
        if DEFER:
            tl.store(FLAGS + tile, tl.max(flagged).to(tl.int8))


@triton.jit
def _deferred_kernel(X, OUT, OUT16, MAT, CENT, THR, DBG, FLAGS, n_rows, stride_x, y_scale,
                     inv_scale2, rpg, gstride, BLK: tl.constexpr, NBLK: tl.constexpr, BITS: tl.constexpr, VB: tl.constexpr,
                     BB: tl.constexpr, NC: tl.constexpr, SYM: tl.constexpr, DOT_NATIVE: tl.constexpr,
                     FAST_PACK: tl.constexpr, COALESCE: tl.constexpr, NAN16: tl.constexpr, DEBUG: tl.constexpr,
                     BLOCK_T: tl.constexpr, CHUNK: tl.constexpr, PLACED: tl.constexpr):
    """The slow exact path for the rows `_store_kernel` (DEFER) left: each program scans CHUNK tile flags at a
    time and redoes only the flagged tiles' non-finite rows (the same `_rotate` decides which)."""
    cols = tl.arange(0, BLK)
    n_tiles = tl.cdiv(n_rows, BLOCK_T)
    for c in range(tl.program_id(0), tl.cdiv(n_tiles, CHUNK), tl.num_programs(0)):
        offs = c * CHUNK + tl.arange(0, CHUNK)
        if tl.max(tl.load(FLAGS + offs, mask=offs < n_tiles, other=0).to(tl.int32)) > 0:
            mat = tl.load(MAT + cols[:, None] * BLK + cols[None, :])
            for tile in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, n_tiles)):
                if tl.load(FLAGS + tile) != 0:
                    rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
                    rmask = rows < n_rows
                    rows64 = rows.to(tl.int64)
                    obytes = _placed(rows, rpg, gstride, VB, PLACED)
                    for j in tl.static_range(NBLK):
                        x = tl.load(X + rows64[:, None] * stride_x + j * BLK + cols[None, :], mask=rmask[:, None],
                                    other=0.0)
                        _, ss, _, _ = _rotate(x, mat, y_scale, inv_scale2, DOT_NATIVE)
                        _slow_rows(x, mat, rows64, obytes, rmask & ~(ss < float("inf")), j, OUT, OUT16, CENT, THR, DBG,
                                   y_scale, BLK, NBLK, BITS, VB, BB, NC, SYM, DOT_NATIVE, FAST_PACK, COALESCE, NAN16,
                                   DEBUG, BLOCK_T)


@triton.jit
def _slow_rows(x, mat, rows64, obytes, smask, j, OUT, OUT16, CENT, THR, DBG, y_scale, BLK: tl.constexpr,
               NBLK: tl.constexpr, BITS: tl.constexpr, VB: tl.constexpr, BB: tl.constexpr, NC: tl.constexpr,
               SYM: tl.constexpr, DOT_NATIVE: tl.constexpr, FAST_PACK: tl.constexpr, COALESCE: tl.constexpr,
               NAN16: tl.constexpr, DEBUG: tl.constexpr, BLOCK_T: tl.constexpr):
    """The reference's order for the rows in smask: zero non-finite blocks, norm from x, divide, compare."""
    xf = x.to(tl.float32)
    bad = (xf != xf) | (tl.abs(xf) == float("inf"))
    row_bad = tl.max(bad.to(tl.int32), axis=1) > 0
    xf = tl.where(row_bad[:, None], 0.0, xf)
    ss = tl.sum(xf * xf, axis=1)
    nrm = tl.sqrt_rn(ss)
    safe = tl.maximum(nrm, _TINY)
    if DOT_NATIVE:
        y = tl.dot(xf.to(x.dtype), mat)
    else:
        y = tl.dot(xf, mat, input_precision="tf32x3")
    y = tl.math.div_rn(y, (safe * y_scale)[:, None])
    idx, cn2 = _codes(y, tl.full(nrm.shape, 1.0, tl.float32), THR, CENT, BITS, SYM, NC)
    n16, stored = _norm16(nrm, cn2, row_bad, NC, NAN16)
    _pack_store(idx, n16, OUT, OUT16, obytes, smask, j, BLK, BITS, VB, BB, BLOCK_T, FAST_PACK, COALESCE)
    if DEBUG:
        _debug_store(DBG, rows64, j, smask, nrm, cn2, stored, ss, NBLK)


def _prepared(p: TurboParams, dtype: torch.dtype, permute: bool = True):
    """(M in `dtype`, columns permuted for the fast packer, y_scale, symmetric codebook?), made once per params."""
    return cached(p, f"_store_mat_{dtype}_{permute}", lambda: _prepare(p, dtype, permute))


def _prepare(p: TurboParams, dtype: torch.dtype, permute: bool):
    blk = p.block
    if p.hadamard:  # y·sqrt(blk) = x @ (diag(s) H): ±1 entries, exact in bf16/fp16
        m = p.signs.double().cpu()[:, None] * sylvester_hadamard(blk)
        y_scale = math.sqrt(blk)
    else:
        m = p.rot.double().cpu().T
        y_scale = 1.0
    if permute:
        q, j, e = torch.meshgrid(torch.arange(4), torch.arange(blk // 8), torch.arange(2), indexing="ij")
        phys = (8 * j + 2 * q + e).flatten()
        logical = (blk // 4 * q + 2 * j + e).flatten()
        perm = torch.empty(blk, dtype=torch.long)
        perm[phys] = logical  # column p of M is logical column perm[p]
        m = m[:, perm]
    thr = p.thresholds.cpu()
    sym = bool(torch.equal(thr, -thr.flip(0))) and bool(torch.equal(p.centroids.cpu(), -p.centroids.cpu().flip(0)))
    return m.to(device=p.rot.device, dtype=dtype).contiguous(), y_scale, sym


SMEM_LIMIT = 232448  # bytes of shared memory one program may use on H100/H200 (sm_90)


def default_tile(block: int, n_blocks: int, native: bool) -> tuple[int, int]:
    """(block_t, num_warps) that `turbo_store` uses unless told: the fastest measured on H100 (64/4) where
    its shared memory fits SMEM_LIMIT with margin, else fewer rows. The float32 (3xTF32) dot keeps big and
    small parts of both operands in shared memory, about 3x the bf16 path, and unrolled blocks add more
    (compiled sizes: `python benchmarks/store_kernel.py --sass`, asserted in tests/test_kernels_store.py)."""
    if native:
        return (64 if n_blocks <= 2 else 32), 4
    if block < 128:
        return 64, 4
    return (32 if n_blocks == 1 else 16), 4


DEFER_MIN_ROWS = 16384  # from this many float32 head vectors, the slow exact path runs as a second launch
DEFER_CHUNK = 1024  # tile flags the deferred pass scans at once


def turbo_store(p: TurboParams, x: torch.Tensor, out: torch.Tensor | None = None, block_t: int | None = None,
                programs: int | None = None, num_warps: int | None = None, *, defer: bool | None = None,
                num_stages: int | None = None, maxnreg: int | None = None, coalesce: bool = True,
                sym: bool | None = None,
                fast_pack: bool | None = None, dot_native: bool | None = None, nan16: int | None = None,
                debug: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize head vectors x [..., head_dim] to packed uint8 [..., vector_bytes] (into `out` if given).

    block_t / num_warps: head vectors per tile and warps per program; None takes `default_tile`.
    defer: rows with a non-finite norm are redone by a second launch instead of inside the main loop, which
    then carries fewer registers. None: only for float32 input from DEFER_MIN_ROWS rows, where it measured
    faster on the H200 (2.41 against 3.26 ms for 2 M turbo3 vectors); bf16 measured faster inline (0.41 against
    0.57 ms), and a decode step's few rows keep one launch. num_stages / maxnreg: Triton's pipelining depth and
    register cap. coalesce: each row's packed units are gathered so that a warp stores a row's bytes in one
    contiguous run (H200, turbo3/128 bf16: 0.41 ms against 0.66 for the accumulator's scattered 16-bit stores,
    which kept L2 at 62 % while DRAM ran at 18 %; docs/kernels.md §R7).

    Diagnosis only: sym / fast_pack / dot_native = False turn the kernel's shortcuts off (None: its own
    choice; True where it cannot apply is an error), nan16 overrides the NaN norm bits, and a float32
    `debug` tensor [rows, n_blocks, 4] receives (norm before correction, sum c[idx]^2, float32 stored, sum y^2).
    """
    x2, out, rpg, gstride = store_rows(x, p.head_dim, p.vector_bytes, out)
    n = x2.shape[0]
    if debug is not None and (debug.shape != (n, p.n_blocks, 4) or debug.dtype != torch.float32
                              or not debug.is_contiguous()):
        raise LowbitError(f"turbo_store: debug must be a contiguous float32 [{n}, {p.n_blocks}, 4] tensor")
    if n == 0:
        return out
    can_fast = p.block >= 64 and out.data_ptr() % 2 == 0 and gstride % 2 == 0
    # The interpreter keeps bf16 as raw uint16 and cannot dot it: there bf16 takes the float32 path.
    can_native = p.hadamard and (x2.dtype == torch.float16
                                 or (x2.dtype == torch.bfloat16 and not _interpret.INTERPRET))
    fast_pack = _choice("fast_pack", fast_pack, can_fast)
    native = _choice("dot_native", dot_native, can_native)
    mat, y_scale, can_sym = _prepared(p, x2.dtype if native else torch.float32, fast_pack)
    sym = _choice("sym", sym, can_sym)
    tile = default_tile(p.block, p.n_blocks, native)
    block_t = tile[0] if block_t is None else block_t
    num_warps = tile[1] if num_warps is None else num_warps
    tiles = triton.cdiv(n, block_t)
    if programs is None:
        programs = tiles if x.device.type != "cuda" else min(tiles, 8 * sm_count(str(x.device)))
    defer = (not native and n >= DEFER_MIN_ROWS) if defer is None else defer
    flags = torch.empty(tiles if defer else 1, dtype=torch.int8, device=x.device)
    args = (x2, out, out.view(torch.int16) if fast_pack else out, mat, p.centroids, p.thresholds,
            out if debug is None else debug, flags, n, x2.stride(0), y_scale, 1.0 / p.block if p.hadamard else 1.0,
            rpg, gstride)
    consts = dict(BLK=p.block, NBLK=p.n_blocks, BITS=p.bits, VB=p.vector_bytes, BB=p.block_bytes,
                  NC=p.norm_correction, SYM=sym, DOT_NATIVE=native, FAST_PACK=fast_pack,
                  COALESCE=coalesce, NAN16=torch_nan16(x2.device, p.norm_correction) if nan16 is None else nan16,
                  DEBUG=debug is not None, BLOCK_T=block_t, PLACED=not out.is_contiguous(), num_warps=num_warps)
    tuning = {k: v for k, v in (("num_stages", num_stages), ("maxnreg", maxnreg)) if v is not None}
    _store_kernel[(programs,)](*args, SAFE=not defer, DEFER=defer, **consts, **tuning)
    if defer:
        chunks = triton.cdiv(tiles, DEFER_CHUNK)
        _deferred_kernel[(chunks if x.device.type != "cuda" else min(chunks, sm_count(str(x.device))),)](
            *args, CHUNK=DEFER_CHUNK, **consts)
    return out


def _choice(name: str, asked: bool | None, possible: bool) -> bool:
    if asked is None:
        return possible
    if asked and not possible:
        raise LowbitError(f"turbo_store: {name}=True does not apply to this codec, input or output")
    return bool(asked)

