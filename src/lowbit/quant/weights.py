"""One call to quantize a weight tensor: `quantize(w, "Q1_0", method="gptq", hessian=H)`.

Returns a `QuantizedTensor`: the packed bytes exactly as they would be stored, the dequantized float32
values a model computes with, and the true bits per weight (every scale, offset, seed counted).

Formats and methods
  Q1_0          ref (llama.cpp, byte-exact) | gptq (calibrated signs, still a plain Q1_0 tensor)
                | rht, rht-gptq (Hadamard-rotated: not loadable by llama.cpp, 8-byte seed counted)
  ARB1          arb | arb-gptq | rht-arb | rht-arb-gptq   (lowbit's own: fp16 alpha+mu per 128, 1.25 bpw)
  TQ1_0, TQ2_0  ref (gguf's amax quantizer) | absmean (BitNet b1.58) | absmean-group (per-256 gamma)
  Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 MXFP4 F16 BF16 F32   ref (gguf's reference quantizers)

Weights are float32 [rows, ne0] in GGUF order (quantization blocks run along the last axis).
`pad=True` lets Q1_0 take rows that are not whole blocks by zero-padding each row to the next
multiple of 128 (the padding's bytes are counted; such a tensor is not a valid GGUF tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType, quants

from lowbit.errors import LowbitError
from lowbit.formats.weights import WEIGHT_TYPES, weight_type
from lowbit.quant import binarize, q1_0, ternary

GGUF_REFERENCE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4", "F16", "BF16", "F32")
METHODS: dict[str, tuple[str, ...]] = {
    "Q1_0": ("ref", "gptq", "rht", "rht-gptq"),
    "ARB1": ("arb", "arb-gptq", "rht-arb", "rht-arb-gptq"),
    "TQ1_0": ternary.METHODS,
    "TQ2_0": ternary.METHODS,
    **{f: ("ref",) for f in GGUF_REFERENCE},
}
DEFAULT_METHOD = {f: m[0] for f, m in METHODS.items()}


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
        if self.fmt == "ARB1" or self.method.startswith("rht") or self.padded:
            return None
        return GGMLQuantizationType[self.fmt]


def formats() -> list[str]:
    return list(METHODS)


def check(fmt: str, method: str | None) -> tuple[str, str]:
    f = str(fmt).upper()
    if f not in METHODS and f in WEIGHT_TYPES:
        raise LowbitError(
            f"lowbit cannot quantize to {f}: the gguf package can read it but has no quantizer for it "
            f"(quantizable: {', '.join(METHODS)})"
        )
    if f not in METHODS:
        raise LowbitError(f"unknown weight format {fmt!r}; known: {', '.join(METHODS)}")
    m = method or DEFAULT_METHOD[f]
    if m not in METHODS[f]:
        raise LowbitError(f"{f} has no method {m!r}; its methods: {', '.join(METHODS[f])}")
    return f, m


def needs_hessian(method: str) -> bool:
    return "gptq" in method


def quantize(
    w: np.ndarray, fmt: str, method: str | None = None, *, hessian: np.ndarray | None = None,
    seed: int = 0, pad: bool = False, name: str = "tensor",
) -> QuantizedTensor:
    fmt, method = check(fmt, method)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        w2 = w.reshape(-1, w.shape[-1]) if w.ndim > 2 else w.reshape(1, -1)
    else:
        w2 = w
    if not np.isfinite(w2).all():
        raise LowbitError(f"{name}: cannot quantize a tensor holding NaN or Inf")
    if needs_hessian(method) and hessian is None:
        raise LowbitError(f"{fmt} method {method!r} needs calibration activations (a Hessian) for {name}")
    try:
        values, data, side = _quantize2d(w2, fmt, method, hessian, seed, pad)
    except LowbitError as e:
        raise LowbitError(f"{name}: {e}") from None
    padded = fmt == "Q1_0" and w2.shape[-1] % q1_0.BLOCK != 0
    return QuantizedTensor(fmt, method, data, values.reshape(w.shape), side, padded)


def _quantize2d(w, fmt, method, hessian, seed, pad):
    ne0 = w.shape[-1]
    if fmt in GGUF_REFERENCE:
        qt = GGMLQuantizationType[fmt]
        wt = weight_type(fmt)
        if ne0 % wt.block:
            raise LowbitError(f"{fmt} needs rows whose length divides by {wt.block}; these have {ne0}")
        data = quants.quantize(w, qt).view(np.uint8).reshape(w.shape[0], -1)
        return quants.dequantize(data, qt).reshape(w.shape).astype(np.float32), data, 0
    if fmt in ternary.TQ_TYPES:
        data = ternary.quantize(w, fmt, method)
        return ternary.dequantize(data, fmt), data, 0

    rotated = method.startswith("rht")
    src, h = w, hessian
    if rotated:
        src = binarize.rotate(w, seed)
        if h is not None:
            h = binarize.rotate_hessian(np.asarray(h, dtype=np.float64), seed)
    if fmt == "Q1_0":
        if ne0 % q1_0.BLOCK:
            if not pad:
                raise LowbitError(
                    f"Q1_0 needs rows whose length divides by {q1_0.BLOCK}; these have {ne0} "
                    "(llama.cpp has no fallback type for Q1_0; pad=True zero-pads rows, bytes counted)"
                )
            width = -(-ne0 // q1_0.BLOCK) * q1_0.BLOCK
            src = np.pad(src, ((0, 0), (0, width - ne0)))
            if h is not None:  # padded inputs are always zero: no curvature, nothing to compensate
                h = np.pad(h, ((0, width - ne0), (0, width - ne0)))
        if "gptq" in method:
            vals, data = binarize.gptq(src, h, "q1_0")
        else:
            data = q1_0.quantize(src)
            vals = q1_0.dequantize(data)
        vals = vals[:, :ne0]
    else:  # ARB1
        if "gptq" in method:
            vals, data = binarize.gptq(src, h, "arb")
        else:
            vals, data = binarize.arb(src)
    if rotated:
        vals = binarize.rotate_back(vals, seed)
    return vals.astype(np.float32), data, binarize.SEED_BYTES if rotated else 0


def dequantize(data: np.ndarray, fmt: str, ne0: int) -> np.ndarray:
    """Packed bytes [rows, row_bytes] of an unrotated tensor -> float32 [rows, ne0]."""
    f = str(fmt).upper()
    if f == "Q1_0":
        return q1_0.dequantize(data)[..., :ne0]
    if f == "ARB1":
        return binarize.arb_unpack(np.asarray(data, dtype=np.uint8), ne0)
    return quants.dequantize(np.asarray(data, dtype=np.uint8), GGMLQuantizationType[f]).astype(np.float32)
