"""The transformers integration of the packed KV cache (needs torch and transformers).

- `cache`: QuantizedKVCache, a transformers Cache whose layers keep K/V as packed bytes in any KV format;
- `stores`: where one layer's K or V bytes live (per token, or in token groups for KIVI keys);
- `backends`: per-device store/load (torch everywhere; `install()` puts the kernels' store on CUDA);
- `memory`: `held_bytes(cache)`, the bytes every tensor of a cache (transformers' own too) really holds;
- `attention`: the "lowbit_turbo" attention function that decodes straight from the packed stores, and
  `enable(model)`.
The hand-off to `lowbit.kernels` is by name: the kernels declare what they take (`kernels.supports`) and
expose store, dequantize and decode_attention over codecs and packed tensors; they know nothing of transformers.
"""

from lowbit.cache.attention import NAME, enable, lowbit_turbo_attention, register
from lowbit.cache.backends import KernelBackend, TorchBackend, backend_for, install, register_backend
from lowbit.cache.cache import (FUSED_MAX_NEW, QuantizedKVCache, QuantizedKVLayer, cache_kwarg, fused_cache,
                                layer_plan, state_nbytes)
from lowbit.cache.memory import held_bytes
from lowbit.cache.stores import TokenGroupStore, VectorStore, make_store

__all__ = ["FUSED_MAX_NEW", "NAME", "KernelBackend", "QuantizedKVCache", "QuantizedKVLayer", "TokenGroupStore",
           "TorchBackend", "VectorStore", "backend_for", "cache_kwarg", "enable", "fused_cache", "held_bytes",
           "install", "layer_plan", "lowbit_turbo_attention", "make_store", "register", "register_backend",
           "state_nbytes"]
