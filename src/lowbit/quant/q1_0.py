"""Q1_0 (ggml type 41): llama.cpp's 1-bit weight type, quantize and dequantize, byte-exact.

A block is 128 weights stored as one fp16 scale `d` followed by 128 sign bits (18 bytes, 1.125 bits
per weight); the block size and byte count come from `lowbit.formats.weights` (gguf's table).
Mirrors `quantize_row_q1_0_ref` / `dequantize_row_q1_0` in llama.cpp ggml/src/ggml-quants.c:
  d = (sum_j |x_j|) / 128, summed left to right in float32, stored as fp16 (round to nearest even);
  bit j (least significant bit first) is set when x_j >= 0 (so -0.0 and 0.0 read as +d);
  value = +d if the bit is set else -d.
gguf 0.19 knows the block size but has no Q1_0 (de)quantizer, hence this module.
"""

from __future__ import annotations

import numpy as np

from lowbit.errors import LowbitError
from lowbit.formats.weights import weight_type

Q1_0 = weight_type("Q1_0")
BLOCK = Q1_0.block
_SCALE_BYTES = 2  # one fp16 `d` at the start of the block (block_q1_0 in ggml-common.h)
_SIGN_BYTES = BLOCK // 8
# The layout must account for every byte the definition gives a block; fail loudly if gguf changes.
assert _SCALE_BYTES + _SIGN_BYTES == Q1_0.block_bytes, "Q1_0 layout disagrees with gguf's GGML_QUANT_SIZES"

_CHUNK_BLOCKS = 1 << 16  # blocks per pass: bounds the temporaries to a few MB


def _check_rows(shape: tuple[int, ...]) -> None:
    if len(shape) == 0 or shape[-1] % BLOCK:
        ne0 = shape[-1] if shape else 0
        raise LowbitError(
            f"Q1_0 needs rows whose length divides by {BLOCK}; this tensor's rows have {ne0} values "
            "(llama.cpp has no fallback type for Q1_0 and refuses too)"
        )


def block_scales(blocks: np.ndarray) -> np.ndarray:
    """fp16 d per block of 128 (blocks: float32 [n, 128]), accumulated exactly like the C loop.

    numpy's sum() adds pairwise, which can differ from the reference's left-to-right float32 sum in
    the last bit, and that can flip the fp16 rounding; so add column by column (vectorized over blocks).
    """
    a = np.abs(blocks).T  # [128, n]: each step below adds one contiguous-ish column to every block
    acc = np.zeros(blocks.shape[0], dtype=np.float32)
    for j in range(BLOCK):
        acc += a[j]
    with np.errstate(over="ignore"):  # an overflowing scale becomes inf; quantize() refuses it
        return (acc / np.float32(BLOCK)).astype("<f2")


def pack(d: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Pack fp16 scales [n] and sign booleans [n, 128] (True = +d) into Q1_0 blocks [n, 18]."""
    out = np.empty((d.shape[0], Q1_0.block_bytes), dtype=np.uint8)
    out[:, :_SCALE_BYTES] = np.asarray(d, dtype="<f2").view(np.uint8).reshape(-1, _SCALE_BYTES)
    out[:, _SCALE_BYTES:] = np.packbits(signs, axis=-1, bitorder="little")
    return out


def quantize(x: np.ndarray) -> np.ndarray:
    """float32 [..., ne0] -> uint8 [..., ne0 / 128 * 18], byte for byte what llama.cpp writes.

    Non-finite input (or a block whose scale overflows fp16) raises LowbitError: llama.cpp's
    quantized-data validation rejects such blocks, so no file is written either.
    """
    x = np.asarray(x, dtype=np.float32)
    _check_rows(x.shape)
    if not np.isfinite(x).all():
        raise LowbitError("cannot quantize to Q1_0: the tensor holds NaN or Inf")
    blocks = x.reshape(-1, BLOCK)
    out = np.empty((blocks.shape[0], Q1_0.block_bytes), dtype=np.uint8)
    for s in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        b = blocks[s : s + _CHUNK_BLOCKS]
        d = block_scales(b)
        if not np.isfinite(d).all():
            raise LowbitError("cannot quantize to Q1_0: a block's mean |x| overflows fp16 (> 65504)")
        out[s : s + len(b)] = pack(d, b >= 0)
    return out.reshape(*x.shape[:-1], x.shape[-1] // BLOCK * Q1_0.block_bytes)


def dequantize(data: np.ndarray) -> np.ndarray:
    """uint8 [..., nb * 18] -> float32 [..., nb * 128] (dequantize_row_q1_0)."""
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim == 0 or data.shape[-1] % Q1_0.block_bytes:
        raise LowbitError(f"Q1_0 data rows must be whole {Q1_0.block_bytes}-byte blocks")
    blocks = data.reshape(-1, Q1_0.block_bytes)
    d = np.ascontiguousarray(blocks[:, :_SCALE_BYTES]).view("<f2").astype(np.float32)  # [n, 1]
    bits = np.unpackbits(blocks[:, _SCALE_BYTES:], axis=-1, bitorder="little").astype(bool)
    values = np.where(bits, d, -d)
    return values.reshape(*data.shape[:-1], data.shape[-1] // Q1_0.block_bytes * BLOCK)
