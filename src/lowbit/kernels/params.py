"""What a GPU kernel needs to know about one codec, as small device tensors.

- TurboQuant (`turbo_params`): only the plain mse formats (turbo2/3/4, Hadamard or QR rotation, with or
  without norm correction) have kernels; the byte layout is read from `TurboLayout.fields(block)` (indices,
  then one fp16 norm, per block) so the kernels index the same bytes the CPU packer writes.
- q8_0 keys (`q8_params`): ggml's blocks of 32 values (fp16 scale, then 32 int8), stored after the codec's
  rotation, if it has one (llama.cpp's Hadamard, or a seeded one); the decode kernels rotate the queries
  the same way, so q·k is unchanged.
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


def store_rows(x: torch.Tensor, head_dim: int, vector_bytes: int, out: torch.Tensor | None):
    """A store kernel's operands: x [..., head_dim] as rows (contiguous last dim), the packed output [...,
    vector_bytes] (`out` if given), and where each row goes in it: row r's bytes start at (r // rows_per_group) ·
    group_stride + (r % rows_per_group) · vector_bytes. So `out` may be a slice of tokens of a larger cache
    [..., capacity, vector_bytes] (`cache[:, :, t:t + n]`): the kernels write a decode step into the cache in place,
    with no copy after them. Returns (x2, out, rows_per_group, group_stride)."""
    x2 = x.reshape(-1, head_dim)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n = x2.shape[0]
    if out is None:
        out = torch.empty(*x.shape[:-1], vector_bytes, dtype=torch.uint8, device=x.device)
    if out.shape[-1] != vector_bytes or out.numel() != n * vector_bytes:
        raise LowbitError(f"store: output {tuple(out.shape)} does not hold {n} vectors of {vector_bytes} bytes")
    if out.is_contiguous():
        return x2, out, max(n, 1), 0
    tokens = out.shape[-2] if out.dim() >= 2 else 1
    lead = [(size, stride) for size, stride in zip(out.shape[:-2], out.stride()[:-2]) if size != 1]
    rows_contiguous = out.stride(-1) == 1 and (tokens == 1 or out.stride(-2) == vector_bytes)
    one_stride = all(a[1] == b[1] * b[0] for a, b in zip(lead, lead[1:]))  # leading dims collapse into one
    if not (rows_contiguous and one_stride):
        raise LowbitError("store: the output must hold each token's vectors back to back, and its leading "
                          f"dimensions must collapse into one (got strides {out.stride()})")
    return x2, out, tokens, lead[-1][1] if lead else 0


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


Q8_BLOCK, Q8_BLOCK_BYTES = 32, 34  # ggml q8_0: fp16 scale d, then 32 int8 (value = d * q)


@dataclass(frozen=True)
class Q8Params:
    """q8_0 vectors as a codec stores them: y = x rotated (per `rot_block` values: y_b = x_b @ rot; no rotation
    when rot is None), then ggml q8_0 blocks of y."""

    head_dim: int
    vector_bytes: int
    rot_block: int
    rot: torch.Tensor | None  # [rot_block, rot_block] fp32 on the device, orthogonal
    bits: int = 8

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., head_dim] -> the frame the bytes are in (float32); the inverse is `unrotate`."""
        if self.rot is None:
            return x.float()
        xb = x.float().reshape(*x.shape[:-1], self.head_dim // self.rot_block, self.rot_block)
        return (xb @ self.rot).reshape(*x.shape[:-1], self.head_dim)

    def plus_minus_one(self) -> tuple[torch.Tensor, float] | None:
        """(sign(rot) in float32, |rot|) when the rotation is one scale times a ±1 matrix (llama.cpp's Hadamard),
        else None: what the Triton store and query rotation multiply exactly on tensor cores. Magnitudes are
        compared, never divided: CUDA divides a tensor by a scalar through its reciprocal, which turned
        1/sqrt(128) / (1/sqrt(128)) into 1 - 1 ulp on the H200."""
        def make():
            if self.rot is None:
                return None
            scale = self.rot.abs().max().item()
            ones = torch.equal(self.rot.abs(), torch.full_like(self.rot, scale))
            return (torch.sign(self.rot).contiguous(), scale) if ones else None
        return cached(self, "_plus_minus_one", make)

    def unrotate(self, y: torch.Tensor) -> torch.Tensor:
        if self.rot is None:
            return y
        yb = y.reshape(*y.shape[:-1], self.head_dim // self.rot_block, self.rot_block)
        return (yb @ self.rot.T).reshape(*y.shape[:-1], self.head_dim)


def _q8_rotation(codec) -> tuple[int, torch.Tensor | None]:
    """(block, matrix) of the codec's rotation around its q8_0 bytes: x_b -> x_b @ matrix per block of values.
    Two shapes exist: llama.cpp's Hadamard per block (`rotate`, `H`, `block`) and a seeded rotation of the
    whole vector (`R`, applied as x @ R.T)."""
    if getattr(codec, "inner", None) is None:
        return 0, None
    if hasattr(codec, "H") and hasattr(codec, "block"):
        return int(codec.block), codec.H.float()
    if hasattr(codec, "R"):
        return codec.head_dim, codec.R.float().T.contiguous()
    raise LowbitError(f"no GPU kernel for {codec.spec.name}: its rotation is not one the kernels know")


def q8_params(codec, device) -> Q8Params:
    """Kernel parameters of a q8_0 codec (rotated or not), cached per (codec, device)."""
    device = torch.device(device)
    cache = codec.__dict__.setdefault("_kernel_params", {})
    if str(device) in cache:
        return cache[str(device)]
    inner = getattr(codec, "inner", None) or codec
    if inner.fmt.name != "q8_0" or codec.head_dim % Q8_BLOCK:
        raise LowbitError(f"no q8_0 kernel for KV format {codec.spec.name} at head_dim {codec.head_dim}")
    block, rot = _q8_rotation(codec)
    p = Q8Params(head_dim=codec.head_dim, vector_bytes=codec.vector_bytes, rot_block=block,
                 rot=None if rot is None else rot.to(device=device, dtype=torch.float32).contiguous())
    assert p.vector_bytes == codec.head_dim // Q8_BLOCK * Q8_BLOCK_BYTES
    cache[str(device)] = p
    return p


def key_params(codec, device) -> "TurboParams | Q8Params":
    """The parameters of a key codec the decode kernels read: q8_0 or TurboQuant."""
    inner = getattr(codec, "inner", None) or codec
    if getattr(getattr(inner, "fmt", None), "name", None) == "q8_0":
        return q8_params(codec, device)
    return turbo_params(codec, device)


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
