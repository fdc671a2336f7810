"""Device kernels for the packed KV cache, and what each one takes.

    from lowbit import kernels
    kernels.supports("turbo3", "turbo3", 128, "cuda")   # KernelSupport(store_k='triton', store_v='triton', decode='cuda')
    packed = kernels.store(codec, x)                     # [..., D] -> uint8 [..., vector_bytes]
    dense = kernels.dequantize(codec, packed, torch.bfloat16)
    out = kernels.decode_attention(q, k_packed, v_packed, k_codec, v_codec)

Each implementation declares in KERNELS what it takes, as vLLM's attention backends declare their head sizes
and KV-cache dtypes: the operation, the device type, the K and V formats (by name), the head dims and the
settings it cannot honour; the first one that takes a setting runs it (KERNELS is ordered fastest first).
- cuda (decode): K turbo3, turbo4 or q8_0 (rotated or not) with V turbo3 or turbo4, head_dim 128 or 256, an
  sm_80+ GPU with NVRTC (`cuda_decode`); at run time it also needs one new token, <= 16 query rows per KV head
  and token-contiguous caches, else Triton runs;
- triton (decode): K turbo2/3/4 or q8_0, V turbo2/3/4, head_dim one power-of-two block or whole 128-blocks up
  to 256 (q8_0 keys: 128 or 256), not centered (`turbo_attention`);
- triton (store, dequantize): turbo2/3/4 on CUDA with Triton importable (`turbo_store`, `turbo_attention`);
  q8_0 stores at head_dim 64, 128 or 256 in one launch (`q8_store`; its dequantize is torch's);
- torch (store, dequantize): q8_0 on CUDA, gguf's bytes computed on the device (`q8`);
- reference (everything): any format with per-token vectors on any device (`reference`: the codec's own
  quantize/dequantize, float32 attention).
Decode blocks of more than MAX_ROWS query rows per KV head (prefill) take the reference.
LOWBIT_KERNELS=reference forces the reference. Codecs come in with `codec.spec` (their format and settings);
nothing here knows transformers (the cache integration is `lowbit.cache`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from lowbit.formats.kv import TURBO_BLOCK, KVSpec, parse_kv_spec
from lowbit.kernels import cuda_decode, q8, reference
from lowbit.kernels.params import MAX_ROWS, key_params, q8_params, turbo_params

# turbo_store and turbo_attention import triton: they load on first use, so the reference runs without it.


@lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_decode_available(device: torch.device) -> bool:
    return triton_available() and cuda_decode.available(device)  # NVRTC compiles once per device


def _tiles(head_dim: int) -> bool:
    """One power-of-two TurboQuant block, or whole 128-value blocks: what the Triton kernels index."""
    return head_dim % TURBO_BLOCK == 0 or (head_dim & (head_dim - 1) == 0 and head_dim < TURBO_BLOCK)


@dataclass(frozen=True)
class Kernel:
    """One implementation and what it takes."""

    name: str
    ops: frozenset[str]  # "store" (store and dequantize), "decode" (decode attention)
    device_type: str | None  # None: any device
    formats: frozenset[str] | None  # K (and V) formats by name; None: every format with per-token vectors
    head_dims: Callable[[int], bool] = field(repr=False)
    refuses: tuple[str, ...] = ()  # settings it cannot honour (they must be off)
    available: Callable[[torch.device], bool] = field(repr=False, default=lambda device: True)
    value_formats: frozenset[str] | None = None  # decode: V formats when they differ from `formats`

    def takes(self, op: str, spec: KVSpec, head_dim: int, device: torch.device, role: str = "k") -> bool:
        if op not in self.ops:
            return False
        if self.device_type is not None and (device.type != self.device_type or not _compiled_kernels()):
            return False
        formats = self.value_formats if role == "v" and self.value_formats is not None else self.formats
        if formats is not None and spec.fmt.name not in formats:
            return False
        return (self.head_dims(head_dim) and not any(spec.get(s) for s in self.refuses)
                and self.available(device))


def _compiled_kernels() -> bool:
    return os.environ.get("LOWBIT_KERNELS") != "reference" and triton_available()


_TURBO_MSE = frozenset({"turbo2", "turbo3", "turbo4"})
KERNELS: tuple[Kernel, ...] = (
    Kernel("cuda", frozenset({"decode"}), "cuda", frozenset(cuda_decode.K_FORMATS), lambda d: d in (128, 256),
           refuses=("center",), available=lambda device: _cuda_decode_available(device),
           value_formats=frozenset(cuda_decode.V_FORMATS)),
    Kernel("triton", frozenset({"decode"}), "cuda", _TURBO_MSE | {"q8_0"},
           lambda d: _tiles(d) and d <= 2 * TURBO_BLOCK, refuses=("center",), value_formats=_TURBO_MSE),
    Kernel("triton", frozenset({"store"}), "cuda", _TURBO_MSE, _tiles, refuses=("center",)),
    Kernel("triton", frozenset({"store"}), "cuda", frozenset({"q8_0"}), lambda d: d in (64, 128, 256)),
    Kernel("torch", frozenset({"store"}), "cuda", frozenset({"q8_0"}), lambda d: d % 32 == 0),
    Kernel("reference", frozenset({"store", "decode"}), None, None, lambda d: True),
)


@dataclass(frozen=True)
class KernelSupport:
    """Which implementation stores K, stores V, and runs decode attention for one setting on one device.
    decode is None where no decode kernel reads the cache (`reason` says why): the model attends densely."""

    store_k: str
    store_v: str
    decode: str | None
    reason: str = ""


def _first(op: str, specs, head_dim: int, device) -> Kernel | None:
    """The first kernel that takes op for every spec (decode: specs are K then V)."""
    device = torch.device(device)
    return next((k for k in KERNELS if all(k.takes(op, s, head_dim, device, role)
                                           for s, role in zip(specs, ("k", "v")))), None)


def supports(k: KVSpec | str, v: KVSpec | str, head_dim: int, device) -> KernelSupport:
    """What the kernels do for K in format k and V in format v (specs or spec strings) at head_dim on device."""
    k, v = parse_kv_spec(k), parse_kv_spec(v)
    group = k.fmt.key_token_group
    store_k = "reference" if group else _first("store", [k], head_dim, device).name
    store_v = _first("store", [v], head_dim, device).name
    if group:
        return KernelSupport(store_k, store_v, None, f"{k.name} keys are packed per channel over groups of {group} "
                                                     "tokens; the decode kernels read per-token vectors")
    return KernelSupport(store_k, store_v, _first("decode", [k, v], head_dim, device).name)


def store_kernel(codec, device) -> str:
    """The implementation that stores (and dequantizes) this codec's vectors on device."""
    return _first("store", [codec.spec], codec.head_dim, device).name


def store(codec, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack x [..., head_dim] into `out` (new if None): the Triton kernels write it in place, also when it is a
    slice of tokens of a larger cache (`params.store_rows`); torch and the reference copy into it."""
    kernel = store_kernel(codec, x.device)
    if kernel == "triton" and codec.spec.fmt.name == "q8_0":
        from lowbit.kernels.q8_store import q8_store

        return q8_store(q8_params(codec, x.device), x, out=out)
    if kernel == "triton":
        from lowbit.kernels.turbo_store import turbo_store

        return turbo_store(turbo_params(codec, x.device), x, out=out)
    if kernel == "torch":
        return q8.store(q8_params(codec, x.device), x, out=out)
    packed = reference.store(codec, x)
    if out is not None:
        out.copy_(packed)
        return out
    return packed


def dequantize(codec, packed: torch.Tensor, dtype=torch.float32, seq_len: int | None = None) -> torch.Tensor:
    kernel = store_kernel(codec, packed.device)
    if codec.spec.fmt.name == "q8_0" and kernel in ("triton", "torch"):  # one q8_0 dequantize: torch's
        return q8.dequantize(q8_params(codec, packed.device), packed, dtype, seq_len)
    if kernel == "triton" and packed.dim() == 4:
        from lowbit.kernels.turbo_attention import turbo_dequantize

        return turbo_dequantize(turbo_params(codec, packed.device), packed, dtype, seq_len)
    return reference.dequantize(codec, packed, dtype, seq_len)


def decode_attention(q, k_packed, v_packed, kcodec, vcodec, scale: float | None = None,
                     seq_len: int | None = None) -> torch.Tensor:
    """Attention of q [B, Hq, LQ, D] (the last LQ of seq_len cached tokens) over packed K/V [B, Hkv, T, bytes]."""
    rows = q.shape[1] // k_packed.shape[1] * q.shape[2]
    kernel = _first("decode", [kcodec.spec, vcodec.spec], kcodec.head_dim, q.device)
    if kernel.name != "reference" and rows <= MAX_ROWS:
        from lowbit.kernels.turbo_attention import turbo_decode_attention

        # "auto": the CUDA kernel where this step's shape allows it, the Triton kernel otherwise
        return turbo_decode_attention(q, k_packed, v_packed, key_params(kcodec, q.device),
                                      turbo_params(vcodec, q.device), scale, seq_len)
    return reference.decode_attention(q, k_packed, v_packed, kcodec, vcodec, scale, seq_len)
