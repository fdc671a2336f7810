"""KV-cache formats: bytes per cached head vector, defined once.

Every format answers one question exactly: how many bytes hold one head vector of `head_dim`
values (`vector_bytes`). The simulator multiplies that by heads, layers, tokens and sequences; the
quantizers in `lowbit.quant` pack their bytes from the same `layout` and a test proves they agree.

Families
- llama.cpp cache types (f32 ... q5_1): ggml blocks from the `gguf` package's table, as `-ctk/-ctv`.
- fp8 (e4m3): one byte per value, as vLLM's `kv_cache_dtype=fp8` (per-tensor scale not counted).
- TurboQuant (arXiv 2504.19874): a head vector is cut into blocks of 128 values (or the whole vector
  when head_dim < 128); each block is rotated, normalized and stored as Lloyd-Max indices plus one
  fp16 norm. `prod` variants spend one of the b bits on QJL signs and add an fp16 residual norm.
  The 2.5- and 3.5-bit settings follow the paper's §4.3 outlier split as the RaBitQ re-run counts
  it: 32 outlier channels at b+1 bits and 96 regular channels at b bits per 128, two fp16 norms.
- KIVI (arXiv 2402.02750): b-bit asymmetric integers, fp16 scale and zero per group of 32 values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import ceil

from lowbit.formats.ggml import GGML_QUANT_SIZES, GGMLQuantizationType

from lowbit.errors import LowbitError

TURBO_BLOCK = 128  # values per TurboQuant norm block (TheTom's llama.cpp turbo*, vLLM turboquant_*)
KIVI_GROUP = 32  # values per KIVI group: b-bit codes, then fp16 scale, then fp16 zero


@dataclass(frozen=True)
class TurboLayout:
    """Byte layout of one TurboQuant block: fields in storage order, each rounded up to whole bytes.

    `fields(block)` is what the packer writes, in order; `block_bytes` is what the simulator charges.
    """

    bits: int  # total bits per value the setting is named for (e.g. 3 for turbo3)
    qjl: bool = False  # TurboQuant_prod: (bits-1)-bit MSE indices + 1-bit QJL signs + fp16 gamma
    outlier_channels: int = 0  # per 128-value block, stored at bits+1 (the §4.3 split)

    def fields(self, block: int) -> list[tuple[str, int]]:
        """(name, bit count) per block, in storage order."""
        if self.outlier_channels:
            n_out = self.outlier_channels * block // TURBO_BLOCK
            return [
                ("outlier_idx", n_out * (self.bits + 1)),
                ("regular_idx", (block - n_out) * self.bits),
                ("outlier_norm", 16),
                ("regular_norm", 16),
            ]
        if self.qjl:
            return [("idx", block * (self.bits - 1)), ("qjl_signs", block), ("norm", 16), ("gamma", 16)]
        return [("idx", block * self.bits), ("norm", 16)]

    def block_bytes(self, block: int) -> int:
        return sum(ceil(bits / 8) for _, bits in self.fields(block))


@dataclass(frozen=True)
class KVFormat:
    name: str
    family: str  # "llama.cpp", "fp8", "turbo", "kivi"
    description: str
    source: str
    ggml: GGMLQuantizationType | None = None
    turbo: TurboLayout | None = None
    kivi_bits: int = 0
    aliases: tuple[str, ...] = field(default=())

    def block_values(self, head_dim: int) -> int:
        if self.ggml is not None:
            return GGML_QUANT_SIZES[self.ggml][0]
        if self.turbo is not None:
            return min(TURBO_BLOCK, _pow2_at_least(head_dim))
        if self.kivi_bits:
            return KIVI_GROUP
        return 1

    def vector_bytes(self, head_dim: int) -> int:
        """Exact bytes that hold one cached head vector of `head_dim` values."""
        if head_dim <= 0:
            raise LowbitError(f"head_dim must be positive, got {head_dim}")
        if self.ggml is not None:
            block, nbytes = GGML_QUANT_SIZES[self.ggml]
            if head_dim % block:
                raise LowbitError(
                    f"KV type {self.name} needs head_dim divisible by {block} (llama.cpp refuses {head_dim})"
                )
            return head_dim // block * nbytes
        if self.turbo is not None:
            # A head_dim that is not a power of two is zero-padded to one for the Hadamard rotation.
            block = self.block_values(head_dim)
            padded = ceil(head_dim / block) * block
            return padded // block * self.turbo.block_bytes(block)
        if self.kivi_bits:
            groups = ceil(head_dim / KIVI_GROUP)
            return ceil(head_dim * self.kivi_bits / 8) + groups * 4  # fp16 scale + fp16 zero per group
        if self.family == "fp8":
            return head_dim
        raise AssertionError(self.name)

    def bits_per_value(self, head_dim: int = 128) -> Fraction:
        return Fraction(self.vector_bytes(head_dim) * 8, head_dim)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _ggml(name: str, text: str) -> KVFormat:
    t = GGMLQuantizationType[name.upper()]
    return KVFormat(name, "llama.cpp", text, "gguf GGML_QUANT_SIZES; llama.cpp -ctk/-ctv", ggml=t)


_TQ = "TurboQuant, arXiv 2504.19874"
KV_FORMATS: dict[str, KVFormat] = {
    f.name: f
    for f in [
        _ggml("f32", "float32"),
        _ggml("f16", "float16 (llama.cpp default)"),
        _ggml("bf16", "bfloat16"),
        _ggml("q8_0", "8-bit, fp16 scale per 32"),
        _ggml("q5_1", "5-bit, fp16 scale and min per 32"),
        _ggml("q5_0", "5-bit, fp16 scale per 32"),
        _ggml("q4_1", "4-bit, fp16 scale and min per 32"),
        _ggml("q4_0", "4-bit, fp16 scale per 32"),
        _ggml("iq4_nl", "4-bit non-linear grid, fp16 scale per 32"),
        KVFormat("fp8", "fp8", "float8 e4m3, one per-tensor scale (not counted)", "vLLM kv_cache_dtype=fp8",
                 aliases=("fp8_e4m3",)),
        *[
            KVFormat(f"turbo{b}", "turbo", f"TurboQuant_mse {b}-bit Lloyd-Max + fp16 norm per 128",
                     f"{_TQ} Alg. 1", turbo=TurboLayout(b))
            for b in (2, 3, 4)
        ],
        *[
            KVFormat(f"turbo{b}-prod", "turbo", f"TurboQuant_prod: {b - 1}-bit MSE + 1-bit QJL + fp16 norm and gamma",
                     f"{_TQ} Alg. 2", turbo=TurboLayout(b, qjl=True))
            for b in (2, 3, 4)
        ],
        KVFormat("turbo2.5", "turbo", "outlier split: 32 ch at 3 bits + 96 at 2 bits, 2 fp16 norms per 128",
                 f"{_TQ} §4.3 (RaBitQ re-run's count)", turbo=TurboLayout(2, outlier_channels=32)),
        KVFormat("turbo3.5", "turbo", "outlier split: 32 ch at 4 bits + 96 at 3 bits, 2 fp16 norms per 128",
                 f"{_TQ} §4.3 (RaBitQ re-run's count)", turbo=TurboLayout(3, outlier_channels=32)),
        *[
            KVFormat(f"kivi{b}", "kivi", f"KIVI {b}-bit asymmetric, fp16 scale+zero per 32 (K per channel, V per token)",
                     "KIVI, arXiv 2402.02750", kivi_bits=b)
            for b in (2, 4)
        ],
    ]
}
_ALIASES = {a: f for f in KV_FORMATS.values() for a in f.aliases}


def kv_format(name: str) -> KVFormat:
    key = str(name).lower()
    found = KV_FORMATS.get(key) or _ALIASES.get(key)
    if found is None:
        raise LowbitError(f"unknown KV-cache format {name!r}; known: {', '.join(KV_FORMATS)}")
    return found
