"""Per-device backends of the cache: how a store's bytes are written and read back densely.

    from lowbit.cache import backends
    backends.install()   # caches on CUDA devices now store (and dequantize) with the kernels that take their format

The torch backend (default, any device) packs with the codec's quantizer and dequantizes the whole layer
for the model's own attention. `KernelBackend` asks `lowbit.kernels` which implementation takes each store's
format on its device (`kernels.store_kernel`, from the kernels' declarations): on CUDA the Triton store
kernel for turbo2/3/4 (rotate, normalize, quantize, pack in one launch) and the Triton dequantize; the torch
path for everything else. Decode attention straight from the packed bytes is `lowbit.cache.attention`.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch

from lowbit import kernels
from lowbit.cache.stores import VectorStore


def on_device(device):
    """Make `device` the current CUDA device while a kernel runs on its tensors: Triton and the CUDA decode
    kernel launch on the current device, which need not be the layer's when a model is split over GPUs
    (accelerate's device_map moves tensors, not the current device)."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


class TorchBackend:
    """Reference path: pack on store, dequantize the whole layer on load (the model's attention runs)."""

    def store(self, store, x: torch.Tensor) -> None:
        store.append(x)

    def load(self, store, dtype: torch.dtype) -> torch.Tensor:
        return store.dense().to(dtype)


class KernelBackend(TorchBackend):
    """The kernels' store and dequantize for the formats they take on the store's device; torch for the rest."""

    def store(self, store, x: torch.Tensor) -> None:
        if isinstance(store, VectorStore) and kernels.store_kernel(store.codec, x.device) != "reference":
            with on_device(x.device):
                store.append(x, pack=partial(kernels.store, store.codec))
        else:
            super().store(store, x)

    def load(self, store, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(store, VectorStore) and store.packed is not None \
                and kernels.store_kernel(store.codec, store.packed.device) != "reference":
            with on_device(store.packed.device):
                return kernels.dequantize(store.codec, store.packed, dtype)
        return super().load(store, dtype)


_BACKENDS: dict[str, TorchBackend] = {}
_DEFAULT = TorchBackend()


def register_backend(device_type: str, backend: TorchBackend) -> None:
    """Use `backend` (with store(store, x) and load(store, dtype)) for caches on this device type."""
    _BACKENDS[device_type] = backend


def backend_for(device) -> TorchBackend:
    return _BACKENDS.get(torch.device(device).type, _DEFAULT)


def install(device_type: str = "cuda") -> KernelBackend:
    """Make caches on this device type store and dequantize through the kernels."""
    backend = KernelBackend()
    register_backend(device_type, backend)
    return backend
