"""Ternary weights {-1, 0, +1} x scale, the BitNet b1.58 way, stored in ggml's TQ1_0 / TQ2_0.

BitNet b1.58 (microsoft/BitNet utils/convert-hf-to-gguf-bitnet.py, `weight_quant`):
  gamma = max(mean|W|, 1e-5);  q = clip(round(W / gamma), -1, 1);  W_hat = gamma * q
with round-half-to-even (torch's round). The per-group variant takes gamma per block of 256 weights,
the TQ block, so each block's stored fp16 scale is exactly its own gamma.

Storage goes through gguf's reference TQ quantizers (d = amax per 256, q = round(x / d)). On weights
that are already ternary that is lossless up to the fp16 rounding of gamma, because a block's amax
is gamma. On ordinary weights (`bitnet=False`, what llama-quantize does) amax scaling zeroes most
weights: the TQ types are containers for ternary-trained models, not a PTQ method.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, quants

from lowbit.errors import LowbitError
from lowbit.formats.weights import weight_type

BITNET_EPS = 1e-5  # the clamp in BitNet's weight_quant
TQ_TYPES = ("TQ1_0", "TQ2_0")


def absmean(x: np.ndarray, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ternary codes (int8, shape of x) and scales: one per tensor, or one per `group` values of a row."""
    x = np.asarray(x, dtype=np.float32)
    if group is None:
        g = x.reshape(1, -1)
    else:
        if x.shape[-1] % group:
            raise LowbitError(f"rows of {x.shape[-1]} values do not split into ternary groups of {group}")
        g = x.reshape(-1, group)
    gamma = np.maximum(np.abs(g).mean(axis=1, dtype=np.float64), BITNET_EPS).astype(np.float32)
    q = np.clip(np.rint(g / gamma[:, None]), -1, 1).astype(np.int8)
    return q.reshape(x.shape), gamma


def ternarize(x: np.ndarray, group: int | None = None) -> np.ndarray:
    """float32 values gamma * q (what the ternary model computes with, before storage)."""
    q, gamma = absmean(x, group)
    if group is None:
        return (q.astype(np.float32) * gamma[0]).reshape(np.shape(x))
    return (q.reshape(-1, group).astype(np.float32) * gamma[:, None]).reshape(np.shape(x))


def quantize(x: np.ndarray, fmt: str = "TQ1_0", *, bitnet: bool = True, per_block: bool = False) -> np.ndarray:
    """Packed TQ1_0 / TQ2_0 bytes of x (uint8 [..., row_bytes]).

    bitnet=False stores x as it is through gguf's TQ quantizer (llama-quantize's behaviour);
    bitnet=True ternarizes first the BitNet way, with gamma per tensor or, per_block, per 256-value block.
    """
    fmt = fmt.upper()
    if fmt not in TQ_TYPES:
        raise LowbitError(f"ternary storage is {' or '.join(TQ_TYPES)}, not {fmt!r}")
    wt = weight_type(fmt)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % wt.block:
        raise LowbitError(f"{fmt} needs rows whose length divides by {wt.block}; these have {x.shape[-1] if x.ndim else 0}")
    src = ternarize(x, wt.block if per_block else None) if bitnet else x
    return quants.quantize(src, GGMLQuantizationType[fmt])


def dequantize(data: np.ndarray, fmt: str = "TQ1_0") -> np.ndarray:
    return quants.dequantize(np.asarray(data, dtype=np.uint8), GGMLQuantizationType[fmt.upper()])
