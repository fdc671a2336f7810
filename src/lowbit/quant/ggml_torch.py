"""ggml's KV block types in torch, on any device: the same bytes as gguf's numpy quantizers (and lowbit's iq4_nl).

`GGMLCodec` (quant/kv_baselines.py) quantizes through gguf's numpy code, on the CPU. A cache on a GPU would
then copy every stored vector to the host and back, and decode the whole layer there at every forward; this
module does the same arithmetic in torch where the tensors are. Each function follows its numpy original
operation for operation in float32 (division, truncation, gguf's round-half-away-from-zero, fp16 rounding of
the scales, the first index on ties), so the bytes are equal; the tests compare them on the CPU. (One
exception: q4_1/q5_1 store a zero minimum as +0, where numpy's SIMD min may keep -0.0 for a block of
signed zeros; the block decodes to zeros either way.)
iq4_nl's scale search sums 32 products per block: the sums here add in numpy's order for a 32-value row
(8 running sums, then pairwise), so even its near-ties resolve the same way.

Block layouts (little-endian fp16 scale `d`, min `m`, 32 values per block):
    q8_0   d | 32 x int8                              value = d * q
    q4_0   d | 16 bytes of nibbles (low: 0-15, high: 16-31)   value = d * (q - 8)
    q4_1   d | m | 16 bytes of nibbles                value = d * q + m
    q5_0   d | qh (32 high bits, uint32) | 16 nibble bytes    value = d * (q - 16)
    q5_1   d | m | qh | 16 nibble bytes               value = d * q + m
    iq4_nl d | 16 nibble bytes, indices into gguf's IQ4_NL.kvalues   value = d * kvalues[q]
"""

from __future__ import annotations

import torch

from lowbit.errors import LowbitError

BLOCK = 32
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL")


def supports(type_name: str) -> bool:
    return type_name.upper() in TYPES


def _blocks(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] % BLOCK:
        raise LowbitError(f"ggml block types need a multiple of {BLOCK} values per vector, got {x.shape[-1]}")
    return x.to(torch.float32).reshape(-1, BLOCK)


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """[n, 1] float32 -> [n, 2] uint8: the fp16 value, little-endian (round to nearest even, as numpy)."""
    return v.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def _f16_value(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).to(torch.float32).reshape(-1, 1)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def _roundf(n: torch.Tensor) -> torch.Tensor:
    """gguf's np_roundf (half away from zero) in the same steps."""
    a = n.abs()
    f = torch.floor(a)
    return torch.sign(n) * (f + torch.floor(2 * (a - f)))


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """[n, 32] codes 0-15 -> [n, 16] bytes: value j in the low nibble of byte j, value 16 + j in its high one."""
    q = q.to(torch.uint8)
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _unnibble(b: torch.Tensor) -> torch.Tensor:
    """[n, 16] bytes -> [n, 32] int64 codes 0-15."""
    return torch.cat([b & 0x0F, b >> 4], -1).to(torch.int64)


_SHIFTS = {}


def _shifts(device) -> torch.Tensor:
    key = str(device)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(8, device=device, dtype=torch.uint8)
    return _SHIFTS[key]


def _high_bits(q: torch.Tensor) -> torch.Tensor:
    """[n, 32] codes 0-31 -> [n, 4] bytes: bit j of the little-endian uint32 = bit 4 of value j (np.packbits little)."""
    bits = ((q.to(torch.uint8) >> 4) & 1).reshape(-1, 4, 8)
    return (bits << _shifts(q.device)).sum(-1, dtype=torch.uint8)


def _unhigh(b: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes -> [n, 32] int64 high bits."""
    return ((b.unsqueeze(-1) >> _shifts(b.device)) & 1).reshape(-1, 32).to(torch.int64)


def _signed_max(blocks: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude with its sign (the first one on ties, as numpy's argmax)."""
    i = blocks.abs().argmax(-1, keepdim=True)
    return torch.gather(blocks, -1, i)


def _sum32(v: torch.Tensor) -> torch.Tensor:
    """Sum of 32 float32 values per row in numpy's order (pairwise_sum for n = 32: 8 running sums, then a tree)."""
    r = v.reshape(*v.shape[:-1], 4, 8)
    acc = r[..., 0, :] + r[..., 1, :]
    acc = acc + r[..., 2, :]
    acc = acc + r[..., 3, :]
    return ((acc[..., 0] + acc[..., 1]) + (acc[..., 2] + acc[..., 3])) + \
        ((acc[..., 4] + acc[..., 5]) + (acc[..., 6] + acc[..., 7]))


def quantize(x: torch.Tensor, type_name: str) -> torch.Tensor:
    """float [..., D] -> uint8 [..., D / 32 * block bytes] in the type's ggml layout, on x's device."""
    t = type_name.upper()
    b = _blocks(x)
    if t == "Q8_0":
        d = b.abs().amax(-1, keepdim=True) / 127
        q = _roundf(b * _inverse(d)).to(torch.int8).view(torch.uint8)
        out = torch.cat([_f16_bytes(d), q], -1)
    elif t in ("Q4_0", "Q5_0"):
        half = 8 if t == "Q4_0" else 16
        d = _signed_max(b) / -half
        q = torch.trunc(b * _inverse(d) + (half + 0.5)).clamp(0, 2 * half - 1)
        parts = [_f16_bytes(d)] + ([_high_bits(q)] if t == "Q5_0" else []) + [_nibbles(q)]
        out = torch.cat(parts, -1)
    elif t in ("Q4_1", "Q5_1"):
        levels = 15 if t == "Q4_1" else 31
        # + 0.0: a zero minimum is stored as +0 (numpy's SIMD min picks a zero's sign its own way; a block of
        # zeros decodes to zeros either way)
        hi, lo = b.amax(-1, keepdim=True), b.amin(-1, keepdim=True) + 0.0
        d = (hi - lo) / levels
        q = torch.trunc((b - lo) * _inverse(d) + 0.5).clamp(0, levels)
        parts = [_f16_bytes(d), _f16_bytes(lo)] + ([_high_bits(q)] if t == "Q5_1" else []) + [_nibbles(q)]
        out = torch.cat(parts, -1)
    elif t == "IQ4_NL":
        out = _iq4_nl(b)
    else:
        raise LowbitError(f"no torch quantizer for ggml type {type_name}")
    return out.reshape(*x.shape[:-1], -1)


def dequantize(p: torch.Tensor, type_name: str, values: int) -> torch.Tensor:
    """uint8 [..., bytes] -> float32 [..., values]."""
    t = type_name.upper()
    n_blocks = values // BLOCK
    b = p.reshape(-1, p.shape[-1] // n_blocks)
    d = _f16_value(b[:, :2])
    if t == "Q8_0":
        v = d * b[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    elif t == "Q4_0":
        v = d * (_unnibble(b[:, 2:]) - 8).to(torch.float32)
    elif t == "Q4_1":
        v = d * _unnibble(b[:, 4:]).to(torch.float32) + _f16_value(b[:, 2:4])
    elif t == "Q5_0":
        q = _unnibble(b[:, 6:]) | (_unhigh(b[:, 2:6]) << 4)
        v = d * (q - 16).to(torch.float32)
    elif t == "Q5_1":
        q = _unnibble(b[:, 8:]) | (_unhigh(b[:, 4:8]) << 4)
        v = d * q.to(torch.float32) + _f16_value(b[:, 2:4])
    elif t == "IQ4_NL":
        grid = torch.tensor(IQ4_NL_VALUES, dtype=torch.float32, device=p.device)
        v = d * grid[_unnibble(b[:, 2:])]
    else:
        raise LowbitError(f"no torch dequantizer for ggml type {type_name}")
    return v.reshape(*p.shape[:-1], values)


def _iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    """lowbit's iq4_nl quantizer (quant/kv_baselines._iq4_nl_quantize: llama.cpp's quantize_row_iq4_nl_ref
    without importance weights), step for step."""
    values = torch.tensor(IQ4_NL_VALUES, dtype=torch.float32, device=blocks.device)
    w = blocks * blocks
    vmax = _signed_max(blocks)
    safe = torch.where(vmax == 0, torch.ones_like(vmax), vmax)
    zero = torch.zeros((), dtype=torch.float32, device=blocks.device)

    def nearest(inv_d):
        return (blocks.unsqueeze(-1) * inv_d[:, None, None] - values).abs().argmin(-1)

    def fit(inv_d):
        q = values[nearest(inv_d)]
        return _sum32(w * q * blocks), _sum32(w * q * q)

    sqx, sq2 = fit((values[0] / -safe)[:, 0] * -1)
    d = torch.where(sq2 > 0, sqx / torch.where(sq2 > 0, sq2, torch.ones_like(sq2)), zero)
    best = d * sqx
    for itry in range(-7, 8):
        sqx, sq2 = fit(((itry + values[0]) / safe)[:, 0])
        better = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = torch.where(better, sqx / torch.where(sq2 > 0, sq2, torch.ones_like(sq2)), d)
        best = torch.where(better, d * sqx, best)
    d = torch.where(vmax[:, 0].abs() < 1e-15, zero, d).to(torch.float16)
    df = d.to(torch.float32)
    inv = torch.where(df != 0, 1.0 / torch.where(df != 0, df, torch.ones_like(df)), zero)
    idx = nearest(inv)
    return torch.cat([d.reshape(-1, 1).view(torch.uint8).reshape(-1, 2), _nibbles(idx)], -1)
