"""Fused q8_0 store (Triton): rotate, quantize and pack head vectors in one launch.

The torch path (`lowbit.kernels.q8`, through `lowbit.quant.ggml_torch`) computes the same bytes in a dozen
elementwise kernels per store; at decode that is about 0.1 ms per layer and step on an H200, which made q8_0
keys slower end to end than their decode kernel is (docs/kernels.md §R5b). Here one program takes BLOCK_T
vectors: y = (x @ S) · s per rotation block, where the rotation is s times a ±1 matrix S (llama.cpp's Hadamard:
s = 1/sqrt(block); bf16/fp16 values times ±1 are exact tensor-core products, float32 sums; float32 input takes
IEEE products), output columns 128 at a time; then ggml's q8_0 steps per 32 values in
gguf's order: d = amax / 127, id = 1 / d (0 for a zero block), q = roundf(y * id) half away from zero as
gguf's np_roundf, d stored as fp16 (round to nearest even) before the 32 int8 codes, 34 bytes a block.

Bytes equal the torch path's except where float32 rounding decides: y summed in another order can move a
value across a rounding midpoint of y * id, or amax by an ulp (`store_check.check_q8_store` counts and checks those).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lowbit.kernels import _interpret
from lowbit.kernels.params import Q8Params, cached, store_rows

_interpret.apply()

QK = 32  # values per q8_0 block
BLOCK_BYTES = 34  # fp16 scale + 32 int8


@triton.jit
def _q8_store_kernel(X, OUT, SIGNS, scale, n_rows, stride_x, rpg, gstride, D: tl.constexpr, RB: tl.constexpr, CW: tl.constexpr,
                     ROTATE: tl.constexpr, NATIVE: tl.constexpr, BLOCK_T: tl.constexpr, PLACED: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < n_rows
    rows64 = rows.to(tl.int64)
    if PLACED:  # a slice of a cache (`params.store_rows`): group · stride + token · bytes
        g = rows // rpg
        obytes = g.to(tl.int64) * gstride + (rows - g * rpg).to(tl.int64) * (D // 32 * 34)
    else:
        obytes = rows64 * (D // 32 * 34)
    k_in = tl.arange(0, RB)
    cw = tl.arange(0, CW)
    NB: tl.constexpr = CW // 32
    for j in tl.static_range(D // RB):
        x = tl.load(X + rows64[:, None] * stride_x + j * RB + k_in[None, :], mask=rmask[:, None], other=0.0)
        for c in tl.static_range(RB // CW):  # output columns in chunks: the ±1 matrix slice stays small
            if ROTATE:
                m = tl.load(SIGNS + k_in[:, None] * RB + c * CW + cw[None, :])
                if NATIVE:  # bf16/fp16 values times ±1: exact products, float32 sums
                    y = tl.dot(x, m) * scale
                else:
                    y = tl.dot(x.to(tl.float32), m, input_precision="ieee") * scale
            else:  # CW == RB: one chunk
                y = x.to(tl.float32)
            _q8_blocks(y, OUT, obytes, rmask, (j * RB + c * CW) // 32, NB, BLOCK_T)


@triton.jit
def _q8_blocks(y, OUT, obytes, rmask, first, NB: tl.constexpr, BLOCK_T: tl.constexpr):
    """ggml's q8_0 of y [R, NB·32] (blocks first .. first + NB - 1 of the rows starting at byte obytes [R])."""
    yb = tl.reshape(y, [BLOCK_T, NB, 32])
    d = tl.math.div_rn(tl.max(tl.abs(yb), axis=2), 127.0)
    inv = tl.where(d == 0, 0.0, tl.math.div_rn(1.0, tl.where(d == 0, 1.0, d)))
    v = yb * inv[:, :, None]
    a = tl.abs(v)
    f = tl.floor(a)
    r = f + tl.floor(2 * (a - f))
    q = tl.where(v < 0, -r, r).to(tl.int32)
    block = obytes[:, None] + (first + tl.arange(0, NB))[None, :] * 34  # [R, NB] byte offsets
    d16 = d.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    tl.store(OUT + block, (d16 & 0xFF).to(tl.uint8), mask=rmask[:, None])
    tl.store(OUT + block + 1, ((d16 >> 8) & 0xFF).to(tl.uint8), mask=rmask[:, None])
    k = tl.arange(0, 32)[None, None, :]
    tl.store(OUT + block[:, :, None] + 2 + k, (q & 0xFF).to(tl.uint8), mask=rmask[:, None, None])


def fused(params: Q8Params) -> bool:
    """Whether q8_store fuses this codec's store (no rotation, or a ±1 one in blocks of 64 to 256 values)."""
    if params.rot is None:
        return params.head_dim % 32 == 0 and params.head_dim & (params.head_dim - 1) == 0
    return params.rot_block in (64, 128, 256) and params.plus_minus_one() is not None


def q8_store(params: Q8Params, x: torch.Tensor, out: torch.Tensor | None = None, block_t: int = 32) -> torch.Tensor:
    """x [..., head_dim] -> uint8 [..., head_dim / 32 * 34] q8_0 blocks of x rotated (into `out` if given); the
    torch path (`q8.store`) where the kernel does not take the rotation (`fused`)."""
    if not fused(params):
        from lowbit.kernels import q8

        return q8.store(params, x, out=out)
    x2, out, rpg, gstride = store_rows(x, params.head_dim, params.vector_bytes, out)
    n = x2.shape[0]
    assert params.vector_bytes == params.head_dim // QK * BLOCK_BYTES
    if n == 0:
        return out
    rotate = params.rot is not None
    native = x2.dtype in (torch.bfloat16, torch.float16) and not _interpret.INTERPRET  # the interpreter: float32
    rb = params.rot_block if rotate else min(params.head_dim, 128)
    if rotate:
        signs, scale = params.plus_minus_one()
        signs = cached(params, f"_signs_{x2.dtype if native else torch.float32}",
                       lambda: signs.to(x2.dtype if native else torch.float32))
    else:
        signs, scale = out, 1.0
    _q8_store_kernel[(triton.cdiv(n, block_t),)](
        x2, out, signs, scale, n, x2.stride(0), rpg, gstride, D=params.head_dim, RB=rb, CW=min(rb, 128), ROTATE=rotate,
        NATIVE=native, BLOCK_T=block_t, PLACED=not out.is_contiguous())
    return out
