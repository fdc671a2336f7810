"""One call to quantize a weight tensor: `quantize(w, "Q1_0", method="gptq", hessian=H)`.

Returns a `QuantizedTensor`: the packed bytes exactly as they would be stored, the dequantized float32
values a model computes with, and the true bits per weight (every scale, offset, seed counted).

Formats and methods
  Q1_0          ref (llama.cpp, byte-exact) | gptq (calibrated signs, still a plain Q1_0 tensor)
                | rht, rht-gptq (Hadamard-rotated: not loadable by llama.cpp, 8-byte seed counted)
  ARB1          arb | arb-gptq | rht-arb | rht-arb-gptq   (lowbit's own: fp16 alpha+mu per 128, 1.25 bpw)
  TQ1_0, TQ2_0  ref (gguf's amax quantizer) | absmean (BitNet b1.58) | absmean-group (per-256 gamma)
  Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 MXFP4 F16 BF16 F32   ref (gguf's reference quantizers)

Each method is one class, registered by defining it (as gguf-py's quants.py registers one class per
ggml type through `__init_subclass__`). The class says what the method is: its name and formats,
whether it needs calibration, whether llama.cpp can run its result, its side bytes; an instance is one
use of it (a format and options, checked in `__post_init__`, as torchao's per-method configs are).
A new method is one subclass:

    class Sign(WeightMethod, name="sign", formats=("Q1_0",)):
        def quantize(self, w, hessian):
            return values, data   # float32 like w, packed uint8 rows

Weights are float32 [rows, ne0] in GGUF order (quantization blocks run along the last axis).
`pad=True` lets Q1_0 take rows that are not whole blocks by zero-padding each row to the next
multiple of 128 (the padding's bytes are counted; such a tensor is not a valid GGUF tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from gguf import GGMLQuantizationType, quants

from lowbit.errors import LowbitError
from lowbit.formats.weights import WEIGHT_TYPES, weight_type
from lowbit.quant import binarize, q1_0, ternary

# format -> method name -> class, in definition order: a format's first method is its default
_METHODS: dict[str, dict[str, type[WeightMethod]]] = {}


@dataclass(frozen=True)
class WeightMethod:
    """One way to quantize weights into one or more formats; defining a subclass with a name registers it."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    calibrated: ClassVar[bool] = False  # needs the Hessian of the layer's inputs (GPTQ)
    loadable: ClassVar[bool] = True  # llama.cpp runs the result as a plain tensor of its format
    side_bytes: ClassVar[int] = 0  # stored beside the tensor's data (a rotation seed)
    replaces_in_mix: ClassVar[str | None] = None  # lowbit's own format: takes this ggml type's place in a mix

    fmt: str
    seed: int = 0  # of a random rotation
    pad: bool = False  # zero-pad rows to whole blocks where the format needs them (Q1_0)

    def __init_subclass__(cls, name: str | None = None, formats: tuple[str, ...] = (), **kwargs):
        super().__init_subclass__(**kwargs)
        if name is None:  # a shared base (say, rotation): nothing to register
            return
        cls.name, cls.formats = name, tuple(formats)
        for f in cls.formats:
            if name in _METHODS.setdefault(f, {}):
                raise TypeError(f"{f} already has a method {name!r} ({_METHODS[f][name].__name__})")
            _METHODS[f][name] = cls

    def __post_init__(self):
        if self.fmt not in self.formats:
            raise LowbitError(f"method {self.name!r} quantizes to {', '.join(self.formats)}, not {self.fmt}")

    def quantize(self, w: np.ndarray, hessian: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """float32 w [rows, ne0] -> (float32 values [rows, ne0], uint8 data [rows, row_bytes])."""
        raise NotImplementedError

    def padded(self, ne0: int) -> bool:
        """Whether rows of ne0 values were zero-padded to whole blocks."""
        return False


# ---------------------------------------------------------------- Q1_0 (llama.cpp's 1-bit type)

class _Q1_0(WeightMethod):
    def _padded_input(self, w, hessian):
        ne0 = w.shape[-1]
        if ne0 % q1_0.BLOCK == 0:
            return w, hessian
        if not self.pad:
            raise LowbitError(
                f"Q1_0 needs rows whose length divides by {q1_0.BLOCK}; these have {ne0} "
                "(llama.cpp has no fallback type for Q1_0; pad=True zero-pads rows, bytes counted)"
            )
        width = -(-ne0 // q1_0.BLOCK) * q1_0.BLOCK
        w = np.pad(w, ((0, 0), (0, width - ne0)))
        if hessian is not None:  # padded inputs are always zero: no curvature, nothing to compensate
            hessian = np.pad(hessian, ((0, width - ne0), (0, width - ne0)))
        return w, hessian

    def padded(self, ne0):
        return ne0 % q1_0.BLOCK != 0


class _Rotated(WeightMethod):
    """Quantizes w R (a seeded random-sign Hadamard rotation along the rows) and computes with Q(w R) R^T:
    llama.cpp would have to rotate activations at run time, so the result is not a llama.cpp tensor."""

    loadable = False
    side_bytes = binarize.SEED_BYTES

    def quantize(self, w, hessian):
        src = binarize.rotate(w, self.seed)
        if hessian is not None:
            hessian = binarize.rotate_hessian(np.asarray(hessian, dtype=np.float64), self.seed)
        values, data = super().quantize(src, hessian)
        return binarize.rotate_back(values, self.seed), data


class Q1_0Ref(_Q1_0, name="ref", formats=("Q1_0",)):
    """llama.cpp's quantize_row_q1_0_ref, byte for byte."""

    def quantize(self, w, hessian):
        ne0 = w.shape[-1]
        src, _ = self._padded_input(w, None)
        data = q1_0.quantize(src)
        return q1_0.dequantize(data)[:, :ne0], data


class Q1_0Gptq(_Q1_0, name="gptq", formats=("Q1_0",)):
    """GPTQ-chosen signs and scales: still a plain Q1_0 tensor."""

    calibrated = True

    def quantize(self, w, hessian):
        ne0 = w.shape[-1]
        src, h = self._padded_input(w, hessian)
        values, data = binarize.gptq(src, h, "q1_0")
        return values[:, :ne0], data


class Q1_0Rht(_Rotated, Q1_0Ref, name="rht", formats=("Q1_0",)):
    pass


class Q1_0RhtGptq(_Rotated, Q1_0Gptq, name="rht-gptq", formats=("Q1_0",)):
    pass


# ---------------------------------------------------------------- ARB1 (lowbit's own 1-bit layout)

class _Arb(WeightMethod):
    loadable = False  # no ggml type holds the layout
    replaces_in_mix = "Q1_0"  # llama.cpp's mixes put it where they put Q1_0


class Arb(_Arb, name="arb", formats=("ARB1",)):
    """ARB-LLM's alternating refined binarization, per group of 128."""

    def quantize(self, w, hessian):
        return binarize.arb(w)


class ArbGptq(_Arb, name="arb-gptq", formats=("ARB1",)):
    calibrated = True

    def quantize(self, w, hessian):
        return binarize.gptq(w, hessian, "arb")


class RhtArb(_Rotated, Arb, name="rht-arb", formats=("ARB1",)):
    pass


class RhtArbGptq(_Rotated, ArbGptq, name="rht-arb-gptq", formats=("ARB1",)):
    pass


# ---------------------------------------------------------------- ternary (BitNet b1.58 in TQ1_0 / TQ2_0)

class _Ternary(WeightMethod):
    def quantize(self, w, hessian):
        data = self._store(w)
        return ternary.dequantize(data, self.fmt), data


class TernaryRef(_Ternary, name="ref", formats=ternary.TQ_TYPES):
    """gguf's TQ quantizer on the raw weights (llama-quantize's behaviour)."""

    def _store(self, w):
        return ternary.quantize(w, self.fmt, bitnet=False)


class Absmean(_Ternary, name="absmean", formats=ternary.TQ_TYPES):
    """BitNet's absmean ternary, one gamma per tensor."""

    def _store(self, w):
        return ternary.quantize(w, self.fmt)


class AbsmeanGroup(_Ternary, name="absmean-group", formats=ternary.TQ_TYPES):
    """BitNet's absmean ternary, one gamma per 256-value block (the TQ block's own scale)."""

    def _store(self, w):
        return ternary.quantize(w, self.fmt, per_block=True)


# ---------------------------------------------------------------- gguf's reference quantizers

GGUF_REFERENCE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4", "F16", "BF16", "F32")


class GgufReference(WeightMethod, name="ref", formats=GGUF_REFERENCE):
    def quantize(self, w, hessian):
        qt = GGMLQuantizationType[self.fmt]
        block = weight_type(self.fmt).block
        if w.shape[-1] % block:
            raise LowbitError(f"{self.fmt} needs rows whose length divides by {block}; these have {w.shape[-1]}")
        data = quants.quantize(w, qt).view(np.uint8).reshape(w.shape[0], -1)
        return quants.dequantize(data, qt).reshape(w.shape), data


# ---------------------------------------------------------------- the entry point

@dataclass(frozen=True)
class QuantizedTensor:
    fmt: str
    method: str
    data: np.ndarray  # uint8 [rows, row_bytes], as stored (for rotated methods: in the rotated basis)
    values: np.ndarray  # float32, the input's shape: what the model computes with
    side_bytes: int = 0  # bytes stored outside `data` (rotation seed)
    padded: bool = False  # rows zero-padded to whole blocks (pad=True)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes) + self.side_bytes

    @property
    def bits_per_weight(self) -> float:
        return self.nbytes * 8 / self.values.size

    @property
    def gguf_type(self) -> GGMLQuantizationType | None:
        """The ggml type to write this tensor as, or None when llama.cpp cannot run it as stored."""
        if not _METHODS[self.fmt][self.method].loadable or self.padded:
            return None
        return GGMLQuantizationType[self.fmt]


def formats() -> list[str]:
    return list(_METHODS)


def methods(fmt: str) -> tuple[str, ...]:
    """A format's method names, the default first."""
    method_for(fmt)  # the format's errors
    return tuple(_METHODS[str(fmt).upper()])


def method_for(fmt: str, method: str | None = None) -> type[WeightMethod]:
    """The registered class of `method` for `fmt` (None: the format's default), or a LowbitError naming the choices."""
    f = str(fmt).upper()
    if f not in _METHODS and f in WEIGHT_TYPES:
        raise LowbitError(
            f"lowbit cannot quantize to {f}: the gguf package can read it but has no quantizer for it "
            f"(quantizable: {', '.join(_METHODS)})"
        )
    if f not in _METHODS:
        raise LowbitError(f"unknown weight format {fmt!r}; known: {', '.join(_METHODS)}")
    known = _METHODS[f]
    m = method or next(iter(known))
    if m not in known:
        raise LowbitError(f"{f} has no method {m!r}; its methods: {', '.join(known)}")
    return known[m]


def replaces_in_mix(fmt: str) -> str | None:
    """The ggml type whose place lowbit's own format takes in llama.cpp's mixes (ARB1 -> Q1_0), else None."""
    known = _METHODS.get(str(fmt).upper())
    return next(iter(known.values())).replaces_in_mix if known else None


def quantize(
    w: np.ndarray, fmt: str, method: str | None = None, *, hessian: np.ndarray | None = None,
    seed: int = 0, pad: bool = False, name: str = "tensor",
) -> QuantizedTensor:
    cls = method_for(fmt, method)
    chosen = cls(str(fmt).upper(), seed=seed, pad=pad)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        w2 = w.reshape(-1, w.shape[-1]) if w.ndim > 2 else w.reshape(1, -1)
    else:
        w2 = w
    if not np.isfinite(w2).all():
        raise LowbitError(f"{name}: cannot quantize a tensor holding NaN or Inf")
    if chosen.calibrated and hessian is None:
        raise LowbitError(f"{chosen.fmt} method {chosen.name!r} needs calibration activations (a Hessian) for {name}")
    try:
        values, data = chosen.quantize(w2, hessian)
    except LowbitError as e:
        raise LowbitError(f"{name}: {e}") from None
    return QuantizedTensor(chosen.fmt, chosen.name, data, values.astype(np.float32).reshape(w.shape), chosen.side_bytes,
                           chosen.padded(w2.shape[-1]))


def dequantize(data: np.ndarray, fmt: str, ne0: int) -> np.ndarray:
    """Packed bytes [rows, row_bytes] of an unrotated tensor -> float32 [rows, ne0]."""
    f = str(fmt).upper()
    if f == "Q1_0":
        return q1_0.dequantize(data)[..., :ne0]
    if f == "ARB1":
        return binarize.arb_unpack(np.asarray(data, dtype=np.uint8), ne0)
    return quants.dequantize(np.asarray(data, dtype=np.uint8), GGMLQuantizationType[f]).astype(np.float32)
