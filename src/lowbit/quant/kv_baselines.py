"""KV-cache codecs besides TurboQuant, and the one place a KV spec string becomes a codec.

A codec quantizes head vectors [..., head_dim] to packed uint8 [..., vector_bytes] and back; each is
registered against its family's kind (`lowbit.quant.kv_codec`):
- f32, f16, bf16 (`NativeCodec`): torch casts, the same bits as gguf's converters (round to nearest even);
- ggml types (q8_0, q5_0, q5_1, q4_0, q4_1): gguf's reference quantizers (`gguf.quants.quantize/dequantize`),
  so the bytes are llama.cpp's `-ctk/-ctv` blocks; stored rotated as llama.cpp stores them (`HadamardCodec`)
  unless the spec says `:norot`; q8_0 everywhere, and every ggml type off the CPU, runs gguf's steps in torch
  on the tensors' device (`lowbit.quant.ggml_torch`: no round trip through host memory), byte for byte gguf's;
- iq4_nl: gguf has only the dequantizer, so quantization here follows llama.cpp's
  `quantize_row_iq4_nl_ref` (scale search over ±7 steps, weights x², gguf's `kvalues` grid) and
  gguf's dequantizer reads the bytes back;
- fp8: float8 e4m3 (torch.float8_e4m3fn) with scale 1.0, as vLLM 0.33.0 stores a cache whose checkpoint has no
  k_scale/v_scale (values beyond ±448 saturate, as vLLM's __NV_SATFINITE cast does); `fp8:amax`: one per-tensor
  scale amax/448 set on the first data (the prefill) and kept, as transformers' Fp8QuantizedLayer does; the
  scale is not counted, as in the format;
- KIVI values: b-bit asymmetric per token, groups of 32 channels, fp16 scale + fp16 zero per group
  (group layout: codes, then scale, then zero). KIVI keys (per channel, groups of 32 tokens) need the
  token axis: `KiviKeys`, the family's key codec (`make_codec(..., keys=True)`);
- llama.cpp's rotation around a quantized ggml type (`HadamardCodec`): store Q(H·x), load H·deq(p), with H
  llama.cpp's normalized Hadamard over contiguous blocks of the head vector (sizes: `GGMLKV.rotation_block`).
  llama.cpp rotates Q, K and V and un-rotates the attention output; with H orthonormal and symmetric
  (H·H = I) that gives the same scores and output as un-rotating K and V on load; bytes are those of the type;
- TurboQuant: `lowbit.quant.turboquant`.

Spec strings (FORMAT[:opt,...]) and the options of each family: `lowbit.formats.kv.parse_kv_spec`.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.formats.kv import KIVI_GROUP, KVFormat, KVSpec, parse_kv_spec
from lowbit.quant import ggml_torch
from lowbit.quant.kv_codec import KVCodec, codec_class
from lowbit.quant.packing import bytes_to_fp16, fp16_to_bytes, pack_bits, unpack_bits
from lowbit.quant.rotation import llamacpp_hadamard
from lowbit.quant.turboquant import TurboQuant  # noqa: F401  (registers the turbo family's codec for make_codec)

FP8_MAX = 448.0  # largest finite float8 e4m3fn
_TORCH_FLOAT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

__all__ = ["FP8Codec", "GGMLCodec", "KiviKeys", "HadamardCodec", "KiviValueCodec", "NativeCodec",
           "make_codec"]


# --- f32 / f16 / bf16 in torch ------------------------------------------------------------------
class NativeCodec(KVCodec, kind="float"):
    """f32/f16/bf16 in torch: the same bits as gguf's converters (round to nearest even), on any device."""

    def __init__(self, fmt: KVFormat, head_dim: int):
        self.fmt, self.head_dim, self.dtype = fmt, head_dim, _TORCH_FLOAT[fmt.name]
        self.vector_bytes = fmt.vector_bytes(head_dim)
        self.spec = KVSpec.of(fmt)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype).contiguous().view(torch.uint8)

    def dequantize(self, p: torch.Tensor) -> torch.Tensor:
        return p.contiguous().view(self.dtype).float()


# --- ggml types through gguf --------------------------------------------------------------------
class GGMLCodec(KVCodec, kind="ggml"):
    """The ggml type's blocks of the raw vector (unrotated); `from_spec` wraps it in llama.cpp's rotation."""

    def __init__(self, fmt: KVFormat, head_dim: int):
        self.fmt, self.head_dim = fmt, head_dim
        self.vector_bytes = fmt.vector_bytes(head_dim)  # raises for a head_dim the block does not divide
        self.qtype = fmt.ggml
        self.spec = KVSpec.of(fmt, rot=False)

    @classmethod
    def from_spec(cls, spec, head_dim, *, seed=0, device="cpu", keys=False):
        codec = cls(spec.fmt, head_dim)
        block = spec.fmt.rotation_block(spec, head_dim, keys)
        if block:
            return HadamardCodec(codec, block, spec)
        codec.spec = spec
        return codec

    @property
    def on_device(self) -> bool:
        """q8_0 quantizes and dequantizes in torch on the tensors' own device, wherever they are (the same bytes as
        gguf's reference, tests/test_turboquant_baselines.py); the other ggml types do so off the CPU and go
        through gguf's numpy code on it (tests/test_ggml_torch.py)."""
        from gguf import GGMLQuantizationType as T

        return self.qtype == T.Q8_0

    def in_torch(self, t: torch.Tensor) -> bool:
        return self.on_device or (t.device.type != "cpu" and ggml_torch.supports(self.qtype.name))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        from gguf import GGMLQuantizationType as T
        from gguf import quants

        if self.in_torch(x):
            return ggml_torch.quantize(x.detach(), self.qtype.name)
        a = x.detach().to("cpu", torch.float32).numpy()
        if self.qtype == T.IQ4_NL:
            out = _iq4_nl_quantize(a)
        else:
            out = quants.quantize(a, self.qtype)
        out = np.ascontiguousarray(out).view(np.uint8).reshape(*a.shape[:-1], self.vector_bytes)
        return torch.from_numpy(out).to(x.device)

    def dequantize(self, p: torch.Tensor) -> torch.Tensor:
        from gguf import quants

        if self.in_torch(p):
            return ggml_torch.dequantize(p, self.qtype.name, self.head_dim)
        a = np.ascontiguousarray(p.detach().to("cpu").numpy())
        out = quants.dequantize(a, self.qtype).reshape(*a.shape[:-1], self.head_dim)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(p.device)


def _iq4_nl_quantize(a: np.ndarray) -> np.ndarray:
    """llama.cpp quantize_row_iq4_nl_ref (no importance weights): per 32 values one fp16 scale and
    16 bytes of 4-bit indices into gguf's IQ4_NL.kvalues (low nibbles: values 0-15, high: 16-31)."""
    from gguf.quants import IQ4_NL

    values = np.array(IQ4_NL.kvalues, dtype=np.float32)
    blocks = a.reshape(-1, 32).astype(np.float32)
    w = blocks * blocks
    amax_i = np.abs(blocks).argmax(-1)
    vmax = np.take_along_axis(blocks, amax_i[:, None], -1)  # signed value of largest magnitude
    safe = np.where(vmax == 0, 1.0, vmax)

    def fit(inv_d):
        idx = np.abs(blocks[..., None] * inv_d[:, None, None] - values).argmin(-1)
        q = values[idx]
        return idx, (w * q * blocks).sum(-1), (w * q * q).sum(-1)

    _, sqx, sq2 = fit((values[0] / -safe)[:, 0] * -1)  # d = max/127 first: 1/d = -values[0]/max
    d = np.where(sq2 > 0, sqx / np.where(sq2 > 0, sq2, 1), 0.0)
    best = d * sqx
    for itry in range(-7, 8):
        _, sqx, sq2 = fit(((itry + values[0]) / safe)[:, 0])
        better = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = np.where(better, sqx / np.where(sq2 > 0, sq2, 1), d)
        best = np.where(better, d * sqx, best)
    d = np.where(np.abs(vmax[:, 0]) < 1e-15, 0.0, d).astype(np.float16)
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d.astype(np.float32), 1), 0.0)
    idx = np.abs(blocks[..., None] * inv[:, None, None] - values).argmin(-1).astype(np.uint8)
    qs = idx[:, :16] | (idx[:, 16:] << 4)
    out = np.concatenate([d.reshape(-1, 1).view(np.uint8), qs], axis=-1)
    return out.reshape(*a.shape[:-1], -1)


# --- fp8 ----------------------------------------------------------------------------------------
class FP8Codec(KVCodec, kind="fp8"):
    """e4m3 of x / scale. scale 1.0 (vLLM without checkpoint scales), or, with `amax`, amax/448 of the first data."""

    def __init__(self, fmt: KVFormat, head_dim: int, amax: bool = False):
        self.fmt, self.head_dim = fmt, head_dim
        self.vector_bytes = fmt.vector_bytes(head_dim)
        self.spec = KVSpec.of(fmt, scale="amax") if amax else KVSpec.of(fmt, scale=1.0)
        self.amax = amax
        self.scale: float | None = None if amax else 1.0

    @classmethod
    def from_spec(cls, spec, head_dim, *, seed=0, device="cpu", keys=False):
        codec = cls(spec.fmt, head_dim, amax=spec["scale"] == "amax")
        codec.spec = spec
        return codec

    @property
    def needs_calibration(self) -> bool:
        return self.scale is None

    def calibrate(self, x: torch.Tensor, keep_dims=()) -> None:
        if not self.amax:
            raise LowbitError("fp8 with scale 1.0 has nothing to calibrate (fp8:amax sets its scale from data)")
        finite = x[torch.isfinite(x)]
        amax = float(finite.abs().max()) if finite.numel() else 0.0
        self.scale = max(amax / FP8_MAX, torch.finfo(torch.float32).tiny)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            self.calibrate(x)
        # e4m3fn has no inf: saturate overflow to ±448 (vLLM's cache write casts with __NV_SATFINITE), keep NaN.
        y = (x.float() / self.scale).clamp(-FP8_MAX, FP8_MAX)
        return y.to(torch.float8_e4m3fn).view(torch.uint8)

    def dequantize(self, p: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            raise LowbitError("fp8 bytes cannot be decoded before a scale is set (quantize or calibrate first)")
        return p.view(torch.float8_e4m3fn).float() * self.scale


# --- KIVI ---------------------------------------------------------------------------------------
def kivi_quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric b-bit over the last dim: codes, fp16 scale, fp16 zero (= min), as in KIVI."""
    finite = torch.isfinite(x).all(-1, keepdim=True)
    xf = torch.where(finite, x.float(), torch.zeros((), device=x.device))
    lo, hi = xf.amin(-1, keepdim=True), xf.amax(-1, keepdim=True)
    scale = ((hi - lo) / ((1 << bits) - 1)).to(torch.float16)
    zero = lo.to(torch.float16)
    s = scale.float()
    codes = torch.where(s > 0, torch.round((xf - zero.float()) / torch.where(s > 0, s, 1)), 0).clamp(0, (1 << bits) - 1)
    nan = torch.full((), float("nan"), device=x.device, dtype=torch.float16)
    return codes.to(torch.int64), torch.where(finite, scale, nan), zero


def kivi_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float() + zero.float()


class KiviValueCodec(KVCodec, kind="kivi"):
    """Per token: head vector cut into groups of 32 channels, each [codes | fp16 scale | fp16 zero]."""

    def __init__(self, fmt: KVFormat, head_dim: int):
        self.fmt, self.head_dim, self.bits = fmt, head_dim, fmt.bits
        self.vector_bytes = fmt.vector_bytes(head_dim)
        self.spec = KVSpec.of(fmt)
        self.groups = [(s, min(KIVI_GROUP, head_dim - s)) for s in range(0, head_dim, KIVI_GROUP)]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for s, n in self.groups:
            codes, scale, zero = kivi_quantize(x[..., s : s + n], self.bits)
            out += [pack_bits(codes, self.bits), fp16_to_bytes(scale.squeeze(-1)), fp16_to_bytes(zero.squeeze(-1))]
        p = torch.cat(out, -1)
        assert p.shape[-1] == self.vector_bytes
        return p

    def dequantize(self, p: torch.Tensor) -> torch.Tensor:
        parts, o = [], 0
        for _, n in self.groups:
            nb = (n * self.bits + 7) // 8
            codes = unpack_bits(p[..., o : o + nb], self.bits, n)
            scale = bytes_to_fp16(p[..., o + nb : o + nb + 2]).unsqueeze(-1)
            zero = bytes_to_fp16(p[..., o + nb + 2 : o + nb + 4]).unsqueeze(-1)
            parts.append(kivi_dequantize(codes, scale, zero))
            o += nb + 4
        return torch.cat(parts, -1)


class KiviKeys(KVCodec, kind="kivi", keys=True):
    """KIVI keys: per channel over groups of 32 tokens. A group [..., 32, D] packs to [..., D, 32·b/8 + 4]
    (each channel: 32 codes, fp16 scale, fp16 zero), i.e. exactly 32 × vector_bytes when D % 32 == 0.
    `quantize_group`/`dequantize_group` work on whole groups of `token_group` tokens."""

    def __init__(self, fmt: KVFormat, head_dim: int):
        self.fmt, self.head_dim, self.bits = fmt, head_dim, fmt.bits
        self.vector_bytes = fmt.vector_bytes(head_dim)
        self.spec = KVSpec.of(fmt)
        self.token_group = fmt.key_token_group
        self.group_bytes = head_dim * ((self.token_group * self.bits + 7) // 8 + 4)

    def quantize_group(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 32, D] -> uint8 [..., group_bytes]."""
        codes, scale, zero = kivi_quantize(x.transpose(-1, -2), self.bits)  # over tokens, per channel
        p = torch.cat([pack_bits(codes, self.bits), fp16_to_bytes(scale.squeeze(-1)),
                       fp16_to_bytes(zero.squeeze(-1))], -1)
        return p.reshape(*p.shape[:-2], self.group_bytes)

    def dequantize_group(self, p: torch.Tensor) -> torch.Tensor:
        p = p.reshape(*p.shape[:-1], self.head_dim, -1)
        nb = (self.token_group * self.bits + 7) // 8
        codes = unpack_bits(p[..., :nb], self.bits, self.token_group)
        scale = bytes_to_fp16(p[..., nb : nb + 2]).unsqueeze(-1)
        zero = bytes_to_fp16(p[..., nb + 2 : nb + 4]).unsqueeze(-1)
        x = kivi_dequantize(codes, scale, zero)
        return x.transpose(-1, -2)


# --- llama.cpp's rotation around a ggml type ----------------------------------------------------
class HadamardCodec(KVCodec):
    """Store inner(H·x), load H·inner⁻¹(p), H llama.cpp's normalized Hadamard of size `block` applied to each
    contiguous run of `block` values of the head vector (block-diagonal; the same H for every layer, K and V)."""

    def __init__(self, inner: KVCodec, block: int, spec: KVSpec | None = None):
        if inner.head_dim % block:
            raise LowbitError(f"a rotation block of {block} does not divide head_dim {inner.head_dim}")
        self.inner, self.fmt, self.head_dim, self.block = inner, inner.fmt, inner.head_dim, block
        self.vector_bytes = inner.vector_bytes
        self.spec = spec or KVSpec.of(inner.fmt, rot=True)
        self.H = llamacpp_hadamard(block)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """H·x per block (H is symmetric, so the row-vector product x·H is the same); its own inverse."""
        xb = x.float().reshape(*x.shape[:-1], self.head_dim // self.block, self.block)
        return (xb @ self.H.to(x.device)).reshape(x.shape)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.quantize(self.rotate(x))

    def dequantize(self, p: torch.Tensor) -> torch.Tensor:
        return self.rotate(self.inner.dequantize(p))


def make_codec(spec: KVSpec | str, head_dim: int, seed: int = 0, device="cpu", keys: bool = False) -> KVCodec:
    """The codec of the spec's family for K (`keys`) or V: the family's key codec where it has one (KIVI's), and
    K's or V's rotation for the llama.cpp types."""
    spec = parse_kv_spec(spec)
    return codec_class(spec.fmt.kind, keys=keys).from_spec(spec, head_dim, seed=seed, device=device, keys=keys)
