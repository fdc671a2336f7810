"""q8_0 (ggml) store and dequantize in torch, on any device: the bytes of gguf's reference quantizer.

gguf (`gguf.quants.Q8_0`, bit-exact with ggml-quants.c): per block of 32 values, d = max|x| / 127 in float32,
q = roundf(x * (1/d)) (half away from zero; 0 where d == 0), stored as fp16(d) then 32 int8. The same float32
operations in torch give the same bytes on the CPU and on a GPU (IEEE division and products, no fused
multiply-add in the elementwise kernels), so the cache's q8_0 keys are written on the GPU without a round
trip through numpy. Rotated codecs: the rotation (`Q8Params.rotate`) is applied first, as the codec does.
"""

from __future__ import annotations

import torch

from lowbit.kernels.params import Q8_BLOCK, Q8_BLOCK_BYTES, Q8Params


def pack(y: torch.Tensor) -> torch.Tensor:
    """[..., D] float32 (already rotated) -> uint8 [..., D/32 * 34] q8_0 blocks."""
    b = y.float().reshape(*y.shape[:-1], y.shape[-1] // Q8_BLOCK, Q8_BLOCK)
    d = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros((), device=y.device), 1 / d)
    v = b * inv
    a = v.abs()
    fl = a.floor()
    q = torch.sign(v) * (fl + (2 * (a - fl)).floor())  # gguf's np_roundf: half away from zero
    out = torch.cat([d.to(torch.float16).view(torch.uint8), q.to(torch.int8).view(torch.uint8)], -1)
    return out.reshape(*y.shape[:-1], y.shape[-1] // Q8_BLOCK * Q8_BLOCK_BYTES)


def unpack(p: torch.Tensor, head_dim: int) -> torch.Tensor:
    """uint8 [..., vector_bytes] -> float32 [..., head_dim] in the stored (rotated) frame."""
    b = p.reshape(*p.shape[:-1], head_dim // Q8_BLOCK, Q8_BLOCK_BYTES)
    d = b[..., :2].contiguous().view(torch.float16).float()
    q = b[..., 2:].contiguous().view(torch.int8).float()
    return (q * d).reshape(*p.shape[:-1], head_dim)


def store(params: Q8Params, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    packed = pack(params.rotate(x))
    if out is not None:
        out.copy_(packed)
        return out
    return packed


def dequantize(params: Q8Params, packed: torch.Tensor, dtype=torch.float32, seq_len: int | None = None) -> torch.Tensor:
    if seq_len is not None:
        packed = packed[..., :seq_len, :]
    return params.unrotate(unpack(packed, params.head_dim)).to(dtype)
