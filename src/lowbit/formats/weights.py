"""Weight formats: ggml tensor types and llama.cpp quantization mixes.

Block sizes and bytes come from the `gguf` package's GGML_QUANT_SIZES table (never retyped here).
A *mix* is a llama.cpp file type (``llama-quantize ... Q4_K_M``): a default tensor type plus the
per-tensor rules in :mod:`lowbit.planning.mix`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from lowbit.formats.ggml import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, LlamaFileType

from lowbit.errors import LowbitError

GGUF_ALIGNMENT = GGUF_DEFAULT_ALIGNMENT  # every tensor's data is padded to this (32)


def aligned(nbytes: int) -> int:
    """Bytes a tensor of `nbytes` data occupies in a GGUF file: padded to GGUF_ALIGNMENT."""
    return -(-nbytes // GGUF_ALIGNMENT) * GGUF_ALIGNMENT


@dataclass(frozen=True)
class WeightType:
    """One ggml tensor type: `block` weights stored in `block_bytes` bytes."""

    name: str
    ggml: GGMLQuantizationType
    block: int
    block_bytes: int

    @property
    def bits_per_weight(self) -> Fraction:
        return Fraction(self.block_bytes * 8, self.block)

    @property
    def quantized(self) -> bool:
        return self.block > 1

    def row_bytes(self, ne0: int) -> int:
        """Bytes of one row of `ne0` values (ggml_row_size); the row must be whole blocks."""
        if ne0 % self.block:
            raise LowbitError(f"a row of {ne0} values is not a whole number of {self.name} blocks ({self.block})")
        return ne0 // self.block * self.block_bytes

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor in ggml order (shape[0] = ne0, the contiguous row)."""
        rows = 1
        for n in shape[1:]:
            rows *= n
        return rows * self.row_bytes(shape[0])


# Types that appear in model files (Q8_K and Q8_1 are dot-product scratch types, never stored).
_FILE_TYPES = [t for t in GGML_QUANT_SIZES if t.name not in ("Q8_K", "Q8_1")]
WEIGHT_TYPES: dict[str, WeightType] = {
    t.name: WeightType(t.name, t, *GGML_QUANT_SIZES[t]) for t in _FILE_TYPES
}


def weight_type(name: str | GGMLQuantizationType) -> WeightType:
    key = name.name if isinstance(name, GGMLQuantizationType) else str(name).upper()
    try:
        return WEIGHT_TYPES[key]
    except KeyError:
        raise LowbitError(f"unknown weight type {name!r}; known: {', '.join(WEIGHT_TYPES)}") from None


@dataclass(frozen=True)
class Mix:
    """A llama.cpp file type (`llama-quantize` target): the default type its rules start from."""

    name: str
    ftype: LlamaFileType
    default: WeightType
    source: str = "llama.cpp src/llama-quant.cpp (llama_tensor_get_type_impl)"


# llama_ftype_get_default_type, keyed by the name llama-quantize takes on its command line.
_DEFAULTS = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0",
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K",
    "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K", "Q2_K_S": "Q2_K",
    "IQ4_XS": "IQ4_XS", "IQ4_NL": "IQ4_NL", "IQ3_M": "IQ3_S", "IQ3_S": "IQ3_S", "IQ3_XS": "IQ3_S",
    "IQ3_XXS": "IQ3_XXS", "IQ2_M": "IQ2_S", "IQ2_S": "IQ2_XS", "IQ2_XS": "IQ2_XS", "IQ2_XXS": "IQ2_XXS",
    "IQ1_M": "IQ1_M", "IQ1_S": "IQ1_S", "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "Q1_0": "Q1_0",
    "MXFP4_MOE": "MXFP4", "NVFP4": "NVFP4",
}


def _ftype(name: str) -> LlamaFileType:
    return LlamaFileType.ALL_F32 if name == "F32" else LlamaFileType[f"MOSTLY_{name}"]


MIXES: dict[str, Mix] = {n: Mix(n, _ftype(n), WEIGHT_TYPES[d]) for n, d in _DEFAULTS.items()}


# Not a mix: a model's weights exactly as its file holds them (a GGUF's tensor types, a checkpoint's dtypes).
STORED = Mix("stored", LlamaFileType.GUESSED, WEIGHT_TYPES["F16"],
             source="the file itself: a GGUF's tensor types or a safetensors checkpoint's dtypes")


def mix(name: str) -> Mix:
    """The mix of that llama-quantize name, or STORED for `stored`."""
    key = str(name).upper()
    if key in MIXES:
        return MIXES[key]
    if key == "STORED":
        return STORED
    raise LowbitError(f"unknown weight format {name!r}; known: stored (the file as it is), {', '.join(MIXES)}")


def mix_for_ftype(ftype: int) -> Mix | None:
    """The mix a GGUF's `general.file_type` names, if it is one of ours."""
    for m in MIXES.values():
        if int(m.ftype) == ftype:
            return m
    return None


# --- lowbit's own weight layouts (no ggml type: llama.cpp cannot load them) ------------------------


@dataclass(frozen=True)
class BinaryLayout:
    """A block of `block` sign bits after fp16 side values (in `fp16_fields` order); defined here once,
    packed by lowbit.quant.binarize."""

    name: str
    block: int
    fp16_fields: tuple[str, ...]

    @property
    def block_bytes(self) -> int:
        return 2 * len(self.fp16_fields) + self.block // 8

    def row_bytes(self, ne0: int) -> int:
        """Bytes per row; a trailing partial group still stores its fields and whole bytes of signs."""
        full, rest = divmod(ne0, self.block)
        return full * self.block_bytes + (2 * len(self.fp16_fields) + -(-rest // 8) if rest else 0)


# ARB1: per 128 weights fp16 alpha, fp16 mu, 128 sign bits (LSB first); value = mu +/- alpha. 1.25 bits/weight.
ARB_LAYOUT = BinaryLayout("ARB1", 128, ("alpha", "mu"))
