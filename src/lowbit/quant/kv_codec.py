"""The KV codec interface and its registry: one codec class per KV family, found by the family's kind.

A codec quantizes head vectors [..., head_dim] to packed uint8 [..., vector_bytes] and back, in the byte
layout its format defines (`lowbit.formats.kv`). A codec class registers itself against its family's kind:

    class GGMLCodec(KVCodec, kind="ggml"): ...
    class KiviKeys(KVCodec, kind="kivi", keys=True): ...   # a family's own key codec (keys grouped over tokens)

and `lowbit.quant.kv_baselines.make_codec(spec, head_dim)` builds the codec of any spec with
`codec_class(spec.fmt.kind).from_spec(...)`, without knowing the families.
"""

from __future__ import annotations

from lowbit.errors import LowbitError
from lowbit.formats.kv import KV_FAMILIES, KVFormat, KVSpec

_CODECS: dict[tuple[str, bool], type["KVCodec"]] = {}


class KVCodec:
    """Base of every KV codec. Subclasses set `fmt`, `head_dim`, `vector_bytes` and `spec` (the format and the
    settings the bytes were made with, what the kernels read to decide whether they take this codec), and
    implement quantize/dequantize. Calibration: a codec that must see data before it can quantize (fp8's
    scale, TurboQuant's outlier channels or channel means) reports `needs_calibration` until `calibrate(x,
    keep_dims)` has run; the cache calibrates on the first tokens it stores (the prefill)."""

    fmt: KVFormat
    head_dim: int
    vector_bytes: int
    spec: KVSpec

    def __init_subclass__(cls, kind: str | None = None, keys: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if kind is None:
            return
        if kind not in KV_FAMILIES:
            raise AssertionError(f"codec {cls.__name__} registers for an unknown KV family kind {kind!r}")
        if (kind, keys) in _CODECS:
            raise AssertionError(f"two codecs for KV family {kind!r}{' keys' if keys else ''}")
        _CODECS[(kind, keys)] = cls

    @classmethod
    def from_spec(cls, spec: KVSpec, head_dim: int, *, seed: int = 0, device="cpu", keys: bool = False) -> "KVCodec":
        """The codec for `spec` at `head_dim` (seed: any random rotation; device: where its tensors live;
        keys: it stores K, not V, for families that treat them differently)."""
        return cls(spec.fmt, head_dim)

    @property
    def needs_calibration(self) -> bool:
        return False

    def calibrate(self, x, keep_dims=()):
        raise LowbitError(f"{self.fmt.name} has nothing to calibrate")

    def quantize(self, x):
        raise NotImplementedError

    def dequantize(self, p):
        raise NotImplementedError


def codec_class(kind: str, keys: bool = False) -> type[KVCodec]:
    """The codec class registered for a family kind (`keys`: its key codec, when the family has its own)."""
    cls = _CODECS.get((kind, True)) if keys else None
    cls = cls or _CODECS.get((kind, False))
    if cls is None:
        raise LowbitError(f"no codec is registered for KV family {kind!r}")
    return cls
