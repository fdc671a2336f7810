"""Device kernels for the packed KV cache, chosen by device.

    from lowbit import kernels
    packed = kernels.store(codec, x)                       # [..., D] -> uint8 [..., vector_bytes]
    dense = kernels.dequantize(codec, packed, torch.bfloat16)
    out = kernels.decode_attention(q, k_packed, v_packed, k_codec, v_codec)

On CUDA with Triton importable, TurboQuant mse formats (turbo2/3/4) run the fused kernels: the Triton store
(`turbo_store`) and decode attention (`turbo_attention`), which hands turbo3 K/V decoding to the CUDA split
kernel (`cuda_decode`, NVRTC) where it applies; everything else (CPU, other formats, prefill-sized query
blocks) runs the reference in `lowbit.kernels.reference`. Set LOWBIT_KERNELS=reference to force the reference.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from lowbit.kernels import reference


@lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _fused(codec, device) -> bool:
    lay = getattr(codec, "layout", None)
    return (torch.device(device).type == "cuda" and os.environ.get("LOWBIT_KERNELS") != "reference"
            and triton_available() and lay is not None and not lay.qjl and not lay.outlier_channels
            and codec.n_blocks * codec.block == codec.head_dim)


def store(codec, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    if _fused(codec, x.device):
        from lowbit.kernels.params import turbo_params
        from lowbit.kernels.turbo_store import turbo_store

        return turbo_store(turbo_params(codec, x.device), x, out=out)
    packed = reference.store(codec, x)
    if out is not None:
        out.copy_(packed)
        return out
    return packed


def dequantize(codec, packed: torch.Tensor, dtype=torch.float32, seq_len: int | None = None) -> torch.Tensor:
    if _fused(codec, packed.device) and packed.dim() == 4:
        from lowbit.kernels.params import turbo_params
        from lowbit.kernels.turbo_attention import turbo_dequantize

        return turbo_dequantize(turbo_params(codec, packed.device), packed, dtype, seq_len)
    return reference.dequantize(codec, packed, dtype, seq_len)


def decode_attention(q, k_packed, v_packed, kcodec, vcodec, scale: float | None = None,
                     seq_len: int | None = None) -> torch.Tensor:
    """Attention of q [B, Hq, LQ, D] (the last LQ of seq_len cached tokens) over packed K/V [B, Hkv, T, bytes]."""
    from lowbit.kernels.params import MAX_ROWS

    rows = q.shape[1] // k_packed.shape[1] * q.shape[2]
    if _fused(kcodec, q.device) and _fused(vcodec, q.device) and rows <= MAX_ROWS and kcodec.block == vcodec.block \
            and kcodec.n_blocks <= 2:
        from lowbit.kernels.params import turbo_params
        from lowbit.kernels.turbo_attention import turbo_decode_attention

        return turbo_decode_attention(q, k_packed, v_packed, turbo_params(kcodec, q.device),
                                      turbo_params(vcodec, q.device), scale, seq_len)
    return reference.decode_attention(q, k_packed, v_packed, kcodec, vcodec, scale, seq_len)
