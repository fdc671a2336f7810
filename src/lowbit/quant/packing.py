"""Bit packing in torch (any device): small unsigned codes <-> uint8 bytes, plus fp16 <-> bytes.

Layout: a little-endian bitstream. Code i of a row occupies bits [i*b, (i+1)*b) of the row, where bit
k lives in byte k // 8 at position k % 8 (least significant first). For b = 4 that is llama.cpp's
"low nibble first" order within a byte; for b = 1 it is the order of ggml's sign bits; 3-bit codes
pack 8 values into 3 bytes (vLLM's 8-in-24-bit packing). The last byte is zero-padded.
"""

from __future__ import annotations

import torch

from lowbit.errors import LowbitError


def packed_bytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) along the last dim into uint8 bytes."""
    if not 1 <= bits <= 8:
        raise LowbitError(f"pack_bits: bits must be 1..8, got {bits}")
    n = codes.shape[-1]
    lead = codes.shape[:-1]
    if n == 0:
        return torch.zeros(*lead, 0, dtype=torch.uint8, device=codes.device)
    c = codes.to(torch.int32)
    if bits == 8:
        return c.to(torch.uint8)
    if bits in (1, 2, 4) and n % (8 // bits) == 0:  # fast path: whole codes per byte
        per = 8 // bits
        c = c.reshape(*lead, n // per, per)
        shifts = torch.arange(0, 8, bits, device=c.device, dtype=torch.int32)
        return (c << shifts).sum(-1).to(torch.uint8)
    # General path: expand to a bitstream, pad to whole bytes, fold 8 bits per byte.
    bit_idx = torch.arange(bits, device=c.device, dtype=torch.int32)
    stream = ((c.unsqueeze(-1) >> bit_idx) & 1).reshape(*lead, n * bits)
    nbytes = packed_bytes(n, bits)
    pad = nbytes * 8 - n * bits
    if pad:
        stream = torch.cat([stream, stream.new_zeros(*lead, pad)], dim=-1)
    weights = (1 << torch.arange(8, device=c.device, dtype=torch.int32))
    return (stream.reshape(*lead, nbytes, 8) * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_bits: the first n codes (int64) of each row of bytes."""
    if not 1 <= bits <= 8:
        raise LowbitError(f"unpack_bits: bits must be 1..8, got {bits}")
    lead = packed.shape[:-1]
    if packed.shape[-1] != packed_bytes(n, bits):
        raise LowbitError(f"unpack_bits: {packed.shape[-1]} bytes cannot hold {n} {bits}-bit codes")
    p = packed.to(torch.int64)
    if n == 0:
        return p.new_zeros(*lead, 0)
    if bits == 8:
        return p
    if bits in (1, 2, 4) and n % (8 // bits) == 0:
        shifts = torch.arange(0, 8, bits, device=p.device)
        return ((p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(*lead, n)
    stream = ((p.unsqueeze(-1) >> torch.arange(8, device=p.device)) & 1).reshape(*lead, -1)[..., : n * bits]
    weights = 1 << torch.arange(bits, device=p.device)
    return (stream.reshape(*lead, n, bits) * weights).sum(-1)


def fp16_to_bytes(x: torch.Tensor) -> torch.Tensor:
    """[...] float -> [..., 2] uint8, the fp16 bit pattern in little-endian byte order."""
    h = x.to(torch.float16).contiguous()
    return h.unsqueeze(-1).view(torch.uint8) if h.dim() else h.reshape(1).view(torch.uint8)


def bytes_to_fp16(b: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 -> [...] float16."""
    return b.contiguous().view(torch.float16).squeeze(-1)


def split_fields(packed: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Cut the last dim of a packed block into consecutive byte fields of the given sizes."""
    if packed.shape[-1] != sum(sizes):
        raise LowbitError(f"packed block has {packed.shape[-1]} bytes, layout needs {sum(sizes)}")
    return list(torch.split(packed, sizes, dim=-1))
