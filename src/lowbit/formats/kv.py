"""KV-cache formats: bytes per cached head vector, defined once.

Every format answers one question exactly: how many bytes hold one head vector of `head_dim`
values (`vector_bytes`). The simulator multiplies that by heads, layers, tokens and sequences; the
quantizers in `lowbit.quant` pack their bytes from the same `layout` and a test proves they agree.

Families
- llama.cpp cache types (f32 ... q5_1): ggml blocks from the `gguf` package's table, as `-ctk/-ctv`. The
  quantized ones are stored Hadamard-rotated, as llama.cpp does since PR #21038 (`GGMLKV.rotation_block`);
  `:norot` is the unrotated cache (llama.cpp with LLAMA_ATTN_ROT_DISABLE=1). A rotation adds no bytes.
- fp8 (e4m3): one byte per value, as vLLM's `kv_cache_dtype=fp8` (per-tensor scale not counted).
- TurboQuant (arXiv 2504.19874): a head vector is cut into blocks of 128 values (or the whole vector
  when head_dim < 128); each block is rotated, normalized and stored as Lloyd-Max indices plus one
  fp16 norm. `prod` variants spend one of the b bits on QJL signs and add an fp16 residual norm.
  The 2.5- and 3.5-bit settings follow the paper's §4.3 outlier split as the RaBitQ re-run counts
  it: 32 outlier channels at b+1 bits and 96 regular channels at b bits per 128, two fp16 norms.
- KIVI (arXiv 2402.02750): b-bit asymmetric integers, fp16 scale and zero per group of 32 values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from math import ceil
from types import MappingProxyType
from typing import Any, ClassVar

from lowbit.formats.ggml import GGML_QUANT_SIZES, GGMLQuantizationType

from lowbit.errors import LowbitError

LLAMACPP_COMMIT = "0c1e57098"  # the llama.cpp whose KV cache the ggml types follow (rotation included)
VLLM_VERSION = "0.33.0"  # the vLLM whose kv_cache_dtype=fp8 the fp8 format follows
LLAMACPP_ROT_BLOCK = 64  # llama.cpp's smallest Hadamard block, and V's block whatever head_dim
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


@dataclass(frozen=True, kw_only=True)
class KVFormat:
    """A KV-cache format; each family is one subclass that registers itself under its `kind`.

    A family owns, in one class:
    - its bytes: `layout_bytes(head_dim)` (and `block_values`), from its layout; `vector_bytes` checks and calls it;
    - its options: `options` maps a spec option (the text after ':' in "turbo3:qr,nonc") to the setting it
      makes, `defaults` the settings without options; `check_spec` refuses settings a head_dim cannot take;
    - how its keys are stored: `key_token_group` > 0 when keys are packed per channel over groups of tokens
      (KIVI) instead of per token.
    Its codec (quantize, dequantize, calibration) is a class in `lowbit.quant` registered against the same kind
    (`class MyCodec(KVCodec, kind="mine")`, see `lowbit.quant.kv_codec`), and the kernels declare which
    formats they take (`lowbit.kernels.supports`). Registration follows gguf-py's quants.py, where each ggml
    type is one class that registers itself through `__init_subclass__`.

    A new family is this class plus its codec class, and its formats in KV_FORMATS:

        @dataclass(frozen=True, kw_only=True)
        class Int6KV(KVFormat, kind="int6", family="int6"):
            options: ClassVar = MappingProxyType({"sym": ("symmetric", True)})
            defaults: ClassVar = MappingProxyType({"symmetric": False})

            def layout_bytes(self, head_dim: int) -> int:
                return ceil(head_dim * 6 / 8) + 2  # 6-bit codes, one fp16 scale

        # lowbit/quant/kv_baselines.py
        class Int6Codec(KVCodec, kind="int6"):
            def quantize(self, x): ...
            def dequantize(self, p): ...
    """

    name: str
    description: str
    source: str
    aliases: tuple[str, ...] = field(default=())

    kind: ClassVar[str]  # registry key, also the key its codec class registers under
    family: ClassVar[str]  # the family shown by `lowbit formats`
    options: ClassVar[Mapping[str, tuple[str, Any]]] = MappingProxyType({})
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    key_token_group: ClassVar[int] = 0

    def __init_subclass__(cls, kind: str | None = None, family: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls.family = family
        if kind is not None:
            if kind in KV_FAMILIES:
                raise AssertionError(f"KV family kind {kind!r} is registered twice")
            cls.kind = kind
            KV_FAMILIES[kind] = cls

    def block_values(self, head_dim: int) -> int:
        """Values that share per-block metadata (a scale, a norm); 1 for plain per-value types."""
        return 1

    def layout_bytes(self, head_dim: int) -> int:
        """Bytes of one head vector in this family's layout (head_dim is positive)."""
        raise NotImplementedError

    def vector_bytes(self, head_dim: int) -> int:
        """Exact bytes that hold one cached head vector of `head_dim` values."""
        if head_dim <= 0:
            raise LowbitError(f"head_dim must be positive, got {head_dim}")
        return self.layout_bytes(head_dim)

    def bits_per_value(self, head_dim: int = 128) -> Fraction:
        return Fraction(self.vector_bytes(head_dim) * 8, head_dim)

    def check_spec(self, spec: "KVSpec", head_dim: int) -> None:
        """Refuse, in one line, settings that this head_dim cannot take (the bytes are checked already)."""


KV_FAMILIES: dict[str, type[KVFormat]] = {}  # kind -> family class, filled by KVFormat.__init_subclass__


@dataclass(frozen=True, kw_only=True)
class GGMLKV(KVFormat, kind="ggml", family="llama.cpp"):
    """llama.cpp cache types (-ctk/-ctv): ggml blocks from the gguf package's table, stored rotated as llama.cpp
    0c1e57098 stores them (`rotation_block`). `norot`: the unrotated cache (llama.cpp with
    LLAMA_ATTN_ROT_DISABLE=1); `rot`: the default, written out."""

    ggml: GGMLQuantizationType
    options: ClassVar = MappingProxyType({"rot": ("rot", True), "norot": ("rot", False)})
    defaults: ClassVar = MappingProxyType({"rot": True})

    def block_values(self, head_dim: int) -> int:
        return GGML_QUANT_SIZES[self.ggml][0]

    def layout_bytes(self, head_dim: int) -> int:
        block, nbytes = GGML_QUANT_SIZES[self.ggml]
        if head_dim % block:
            raise LowbitError(f"KV type {self.name} needs head_dim divisible by {block} (llama.cpp refuses {head_dim})")
        return head_dim // block * nbytes

    def rotation_block(self, spec: "KVSpec", head_dim: int, keys: bool) -> int:
        """Size n of the Hadamard blocks llama.cpp applies to K (keys) or V of this head_dim, 0 for none.

        As llama_kv_cache's constructor and build_input_{k,v}_rot: rotated only when head_dim % 64 == 0 (else
        none, not an error); K in blocks of the largest power of two >= 64 dividing head_dim, V always in 64s
        (llama.cpp found smaller V blocks better); each block a contiguous run along the head dim."""
        if not spec.get("rot", False) or head_dim % LLAMACPP_ROT_BLOCK:
            return 0
        n = LLAMACPP_ROT_BLOCK
        while keys and head_dim % (2 * n) == 0:
            n *= 2
        return n


@dataclass(frozen=True, kw_only=True)
class FloatKV(GGMLKV, kind="float"):
    """f32, f16, bf16: plain floats, one per value (ggml types of block 1); the same bits as gguf's converters.
    Never rotated: llama.cpp rotates only quantized cache types."""

    options: ClassVar = MappingProxyType({})
    defaults: ClassVar = MappingProxyType({"rot": False})

    def rotation_block(self, spec: "KVSpec", head_dim: int, keys: bool) -> int:
        return 0


@dataclass(frozen=True, kw_only=True)
class FP8KV(KVFormat, kind="fp8", family="fp8"):
    """float8 e4m3, one byte per value, as vLLM's kv_cache_dtype=fp8 (its per-tensor scale is not counted).
    Default: vLLM 0.33.0 for a checkpoint without KV scales, scale 1.0 (x cast to e4m3, saturating at ±448).
    `amax`: one per-tensor scale amax/448 set on the prefill, as transformers' quantized cache scales it."""

    options: ClassVar = MappingProxyType({"amax": ("scale", "amax")})
    defaults: ClassVar = MappingProxyType({"scale": 1.0})

    def layout_bytes(self, head_dim: int) -> int:
        return head_dim


@dataclass(frozen=True, kw_only=True)
class TurboKV(KVFormat, kind="turbo", family="turbo"):
    """TurboQuant (arXiv 2504.19874): blocks of 128 values (or the whole vector when shorter), each stored as
    `turbo.fields(block)`. Options: `qr`|`hadamard` (rotation, default hadamard), `beta`|`gaussian` (codebook,
    default beta), `nc`|`nonc` (norm correction, default on for mse formats, as vLLM's `_nc` presets), `center`
    (lowbit's addition: subtract a per-channel mean calibrated on the prefill, per KV head; the mean is per-head
    metadata, D fp16 values per head and layer, not per-vector storage)."""

    turbo: TurboLayout
    options: ClassVar = MappingProxyType({
        "qr": ("rotation", "qr"), "hadamard": ("rotation", "hadamard"),
        "beta": ("codebook", "beta"), "gaussian": ("codebook", "gaussian"),
        "nc": ("norm_correction", True), "nonc": ("norm_correction", False),
        "center": ("center", True),
    })
    defaults: ClassVar = MappingProxyType({"rotation": "hadamard", "codebook": "beta", "norm_correction": True,
                                           "center": False})

    def block_values(self, head_dim: int) -> int:
        return min(TURBO_BLOCK, _pow2_at_least(head_dim))

    def layout_bytes(self, head_dim: int) -> int:
        # A head_dim that is not a power of two is zero-padded to one for the Hadamard rotation.
        block = self.block_values(head_dim)
        padded = ceil(head_dim / block) * block
        return padded // block * self.turbo.block_bytes(block)

    def check_spec(self, spec: "KVSpec", head_dim: int) -> None:
        if self.block_values(head_dim) < 16 and self.turbo.outlier_channels:
            raise LowbitError(f"{spec.name}: head_dim {head_dim} is too small for the outlier split")


@dataclass(frozen=True, kw_only=True)
class KiviKV(KVFormat, kind="kivi", family="kivi"):
    """KIVI (arXiv 2402.02750): b-bit asymmetric integers, fp16 scale and zero per group of 32 values; values per
    token (groups of 32 channels), keys per channel over groups of 32 tokens."""

    bits: int
    key_token_group: ClassVar[int] = KIVI_GROUP

    def block_values(self, head_dim: int) -> int:
        return KIVI_GROUP

    def layout_bytes(self, head_dim: int) -> int:
        groups = ceil(head_dim / KIVI_GROUP)
        return ceil(head_dim * self.bits / 8) + groups * 4  # fp16 scale + fp16 zero per group


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _ggml(name: str, text: str) -> GGMLKV:
    t = GGMLQuantizationType[name.upper()]
    if GGML_QUANT_SIZES[t][0] == 1:
        return FloatKV(name=name, description=text, source="gguf GGML_QUANT_SIZES; llama.cpp -ctk/-ctv", ggml=t)
    return GGMLKV(name=name, description=f"{text}, Hadamard-rotated (:norot: not)",
                  source=f"gguf GGML_QUANT_SIZES; llama.cpp {LLAMACPP_COMMIT} -ctk/-ctv (rotation: PR #21038)",
                  ggml=t)


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
        FP8KV(name="fp8", description="float8 e4m3, per-tensor scale 1.0 (:amax = amax/448 from the prefill)",
              source=f"vLLM {VLLM_VERSION} kv_cache_dtype=fp8, no checkpoint KV scales", aliases=("fp8_e4m3",)),
        *[
            TurboKV(name=f"turbo{b}", description=f"TurboQuant_mse {b}-bit Lloyd-Max + fp16 norm per 128",
                    source=f"{_TQ} Alg. 1", turbo=TurboLayout(b))
            for b in (2, 3, 4)
        ],
        *[
            TurboKV(name=f"turbo{b}-prod",
                    description=f"TurboQuant_prod: {b - 1}-bit MSE + 1-bit QJL + fp16 norm and gamma",
                    source=f"{_TQ} Alg. 2", turbo=TurboLayout(b, qjl=True))
            for b in (2, 3, 4)
        ],
        TurboKV(name="turbo2.5", description="outlier split: 32 ch at 3 bits + 96 at 2 bits, 2 fp16 norms per 128",
                source=f"{_TQ} §4.3 (RaBitQ re-run's count)", turbo=TurboLayout(2, outlier_channels=32)),
        TurboKV(name="turbo3.5", description="outlier split: 32 ch at 4 bits + 96 at 3 bits, 2 fp16 norms per 128",
                source=f"{_TQ} §4.3 (RaBitQ re-run's count)", turbo=TurboLayout(3, outlier_channels=32)),
        *[
            KiviKV(name=f"kivi{b}",
                   description=f"KIVI {b}-bit asymmetric, fp16 scale+zero per 32 (K per channel, V per token)",
                   source="KIVI, arXiv 2402.02750", bits=b)
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


@dataclass(frozen=True)
class KVSpec:
    """A format with its options, as written FORMAT[:opt,...] (e.g. "turbo3:qr,nonc", "q4_0:norot").

    `spec["rotation"]` reads a setting: the family's default, or what an option set."""

    fmt: KVFormat
    settings: tuple[tuple[str, Any], ...] = ()
    text: str = ""
    opts: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.text or self.fmt.name

    def __getitem__(self, key: str):
        for k, v in self.settings:
            if k == key:
                return v
        raise KeyError(f"{self.fmt.name} has no setting {key!r}")

    def get(self, key: str, default=None):
        return dict(self.settings).get(key, default)

    def bits_per_value(self, head_dim: int) -> float:
        """Exact, from the format definition (a rotation adds no bytes)."""
        return float(self.fmt.bits_per_value(head_dim))

    def check_head_dim(self, head_dim: int) -> None:
        """Fail early, in one line, for a head_dim this format and its settings cannot hold."""
        self.fmt.vector_bytes(head_dim)
        self.fmt.check_spec(self, head_dim)

    @classmethod
    def of(cls, fmt: KVFormat, **settings) -> "KVSpec":
        """The spec of `fmt` with the family's defaults, overridden by `settings`."""
        unknown = set(settings) - set(fmt.defaults)
        if unknown:
            raise LowbitError(f"{fmt.name} has no setting {', '.join(sorted(unknown))}")
        return cls(fmt, tuple(sorted({**fmt.defaults, **settings}.items())))


def parse_kv_spec(text: str | KVSpec) -> KVSpec:
    if isinstance(text, KVSpec):
        return text
    name, _, rest = str(text).strip().lower().partition(":")
    fmt = kv_format(name)
    opts = tuple(o for o in rest.split(",") if o) if rest else ()
    settings = dict(fmt.defaults)
    given: dict[str, str] = {}
    for o in opts:
        if o not in fmt.options:
            takes = ", ".join(fmt.options) or "no options"
            raise LowbitError(f"KV spec {text!r}: option {o!r} does not apply to {fmt.name} (it takes {takes})")
        key, value = fmt.options[o]
        if key in given and fmt.options[given[key]][1] != value:
            raise LowbitError(f"KV spec {text!r}: options {given[key]!r} and {o!r} contradict each other")
        given[key] = o
        settings[key] = value
    canonical = fmt.name + (":" + ",".join(opts) if opts else "")
    return KVSpec(fmt, tuple(sorted(settings.items())), text=canonical, opts=opts)
