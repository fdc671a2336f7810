"""What a GPU kernel needs to know about one TurboQuant codec, as small device tensors.

Only the plain mse formats (turbo2/3/4, Hadamard or QR rotation, with or without norm correction) have
kernels; the byte layout is read from `TurboLayout.fields(block)` (indices, then one fp16 norm, per
block) so the kernels index the same bytes the CPU packer writes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError
from lowbit.quant.rotation import sylvester_hadamard
from lowbit.quant.turboquant import TurboQuant


@functools.lru_cache(maxsize=None)
def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (grid sizes are chosen per SM)."""
    return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count


def cached(p: "TurboParams", name: str, make):
    """A tensor derived from `p` (a device copy, a permuted matrix...), made once and kept on `p` itself, so
    it lives and dies with the codec (and is never made inside a CUDA-graph capture after the first call)."""
    if name not in p.__dict__:
        p.__dict__[name] = make()
    return p.__dict__[name]


MAX_ROWS = 64  # query rows per KV head (GQA group x new tokens) the decode kernel takes; more is prefill


@dataclass(frozen=True)
class TurboParams:
    bits: int
    head_dim: int
    block: int  # values per rotated block (128, or head_dim when smaller)
    n_blocks: int
    block_bytes: int  # index bytes + 2 norm bytes
    idx_bytes: int
    vector_bytes: int
    norm_correction: bool
    hadamard: bool
    rot: torch.Tensor  # [block, block] fp32, y = u @ rot.T
    centroids: torch.Tensor  # [2**bits] fp32
    thresholds: torch.Tensor  # [2**bits - 1] fp32
    signs: torch.Tensor | None  # [block] fp32 (Hadamard only)


def turbo_params(codec, device) -> TurboParams:
    """Kernel parameters for a `lowbit.quant.turboquant.TurboQuant` codec, cached per (codec, device)."""
    device = torch.device(device)
    cache = codec.__dict__.setdefault("_kernel_params", {})  # lives and dies with the codec
    if str(device) in cache:
        return cache[str(device)]
    if not isinstance(codec, TurboQuant) or codec.layout.qjl or codec.layout.outlier_channels or codec.center:
        raise LowbitError(f"no GPU kernel for KV format {codec.spec.name}: kernels cover turbo2, turbo3 and turbo4 "
                          "(not centered)")
    names = [n for n, _ in codec.fields]
    assert names == ["idx", "norm"], names  # the storage order the kernels index
    st = codec.stages[0]
    blk = codec.block
    if blk & (blk - 1) or codec.n_blocks * blk != codec.head_dim:
        raise LowbitError(f"GPU kernels need a power-of-two block that tiles head_dim, got {codec.head_dim}")
    hadamard = bool(torch.equal(st.rot.abs().cpu(), torch.full((blk, blk), 1 / math.sqrt(blk)).float()))
    signs = None
    if hadamard:
        h = sylvester_hadamard(blk).float()
        # R = H diag(s) / sqrt(d): recover s from the first row (H's first row is all ones).
        signs = torch.sign(st.rot[0].cpu()).float()
        assert torch.allclose(h * signs / math.sqrt(blk), st.rot.cpu().float())
        signs = signs.to(device)
    p = TurboParams(
        bits=st.bits, head_dim=codec.head_dim, block=blk, n_blocks=codec.n_blocks,
        block_bytes=sum(codec.field_bytes), idx_bytes=codec.field_bytes[0], vector_bytes=codec.vector_bytes,
        norm_correction=codec.norm_correction, hadamard=hadamard,
        rot=st.rot.to(device=device, dtype=torch.float32).contiguous(),
        centroids=st.centroids.to(device=device, dtype=torch.float32).contiguous(),
        thresholds=st.thresholds.to(device=device, dtype=torch.float32).contiguous(),
        signs=signs,
    )
    assert p.idx_bytes == blk * p.bits // 8 and p.block_bytes == p.idx_bytes + 2
    cache[str(device)] = p
    return p
