"""CUDA backend for `lowbit.kvcache.QuantizedKVCache`, through the cache's own seam (`register_backend`).

    from lowbit.kernels.cache_backend import install
    install()          # caches on CUDA devices now store with the fused Triton kernel

store(): turbo2/3/4 K/V go through the fused store kernel (rotate, normalize, quantize, pack) instead of
the torch quantizer; load(): the whole layer is dequantized by the Triton kernel for the model's own
attention. Other formats fall back to the cache's torch path. For decoding without any dense K/V, use
`lowbit.kernels.attention.enable(model)`: the cache hands its packed stores to the fused decode attention.
"""

from __future__ import annotations

import torch

from lowbit import kernels


class CudaBackend:
    def store(self, store, x: torch.Tensor) -> None:
        codec = getattr(store, "codec", None)
        if codec is None or not kernels._fused(codec, x.device) or not hasattr(store, "packed"):
            store.append(x)
            return
        if x.shape[-2] == 0:
            return
        store.extend(kernels.store(codec, x))

    def load(self, store, dtype: torch.dtype) -> torch.Tensor:
        codec = getattr(store, "codec", None)
        if codec is not None and getattr(store, "packed", None) is not None and kernels._fused(codec, store.packed.device):
            return kernels.dequantize(codec, store.packed, dtype)
        return store.dense().to(dtype)


def install(device_type: str = "cuda") -> CudaBackend:
    from lowbit.kvcache import register_backend

    backend = CudaBackend()
    register_backend(device_type, backend)
    return backend
