"""q8_0 (ggml) store and dequantize for the kernels, on any device: the bytes of gguf's reference quantizer.

The block arithmetic is lowbit.quant.ggml_torch's (one torch implementation of the ggml types, byte for byte
gguf's); this module adds the kernels' parameters: the rotation (`Q8Params.rotate`) is applied first, as the
codec does, and undone on load.
"""

from __future__ import annotations

import torch

from lowbit.kernels.params import Q8Params
from lowbit.quant import ggml_torch


def pack(y: torch.Tensor) -> torch.Tensor:
    """[..., D] float32 (already rotated) -> uint8 [..., D/32 * 34] q8_0 blocks."""
    return ggml_torch.quantize(y, "Q8_0")


def unpack(p: torch.Tensor, head_dim: int) -> torch.Tensor:
    """uint8 [..., vector_bytes] -> float32 [..., head_dim] in the stored (rotated) frame."""
    return ggml_torch.dequantize(p, "Q8_0", head_dim)


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
