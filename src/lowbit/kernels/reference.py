"""The CPU reference of every kernel: what the Triton kernels must reproduce.

- store: `TurboQuant.quantize` (the CPU quantizer's packed bytes and fp16 norms);
- dequantize: `TurboQuant.dequantize`;
- decode attention: dequantize K and V with the reference, then softmax attention in float32, the
  LQ new queries being the last LQ cached tokens (causal), GQA by repeating each KV head.
"""

from __future__ import annotations

import torch


def store(codec, x: torch.Tensor) -> torch.Tensor:
    return codec.quantize(x)


def dequantize(codec, packed: torch.Tensor, dtype=torch.float32, seq_len: int | None = None) -> torch.Tensor:
    if seq_len is not None:
        packed = packed[..., :seq_len, :]
    return codec.dequantize(packed).to(dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """float32 causal softmax attention of q [B, Hq, LQ, D] (the last LQ positions) over dense k, v [B, Hkv, T, D]."""
    B, Hq, LQ, D = q.shape
    T, group = k.shape[-2], Hq // k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    s = (q.float() @ kf.transpose(-1, -2)) * scale
    future = torch.arange(T, device=q.device)[None, :] > (T - LQ + torch.arange(LQ, device=q.device))[:, None]
    s = s.masked_fill(future, float("-inf"))
    return (s.softmax(-1) @ vf).to(q.dtype)


def decode_attention(q, k_packed, v_packed, kcodec, vcodec, scale=None, seq_len=None) -> torch.Tensor:
    return attention(q, dequantize(kcodec, k_packed, seq_len=seq_len), dequantize(vcodec, v_packed, seq_len=seq_len),
                     scale)
