"""The "lowbit_turbo" attention function: decode attention straight from a QuantizedKVCache's packed stores.

    from lowbit.cache import enable
    cache = enable(model, kv_k="turbo3")      # registers the function, sets it on the model, returns the cache
    model.generate(ids, past_key_values=cache, ...)

With `QuantizedKVCache(..., fused_attention=True)`, a full-attention layer that gets a few new tokens
(decoding) stores them and returns empty K/V; this function, called next by the same attention module, takes
that pending step from the cache by `module.layer_idx` and calls `lowbit.kernels.decode_attention` on the
layer's packed K and V (on CUDA the fused kernels, the reference elsewhere; `lowbit.kernels.supports` says
which). Everything else (prefill, sliding-window layers, KIVI keys) gets dense K/V and torch's SDPA, exactly
as the "sdpa" implementation would; a decode step that must attend densely here (a padding mask, softcap,
dropout) is dequantized and counted in the cache's `dense_fallbacks`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lowbit import kernels
from lowbit.cache.backends import backend_for, on_device
from lowbit.cache.cache import ATTENTION, QuantizedKVCache, fused_cache

NAME = ATTENTION


def _causal_only(mask: torch.Tensor | None, lq: int, t: int) -> bool:
    """True when the mask is nothing but causal over the last lq of t positions (no padding)."""
    if mask is None:
        return True
    allowed = mask if mask.dtype == torch.bool else mask == 0
    want = torch.arange(t, device=mask.device)[None, :] <= (t - lq + torch.arange(lq, device=mask.device))[:, None]
    return allowed.shape[-2:] == (lq, t) and bool((allowed == want).all())


def attention_function(decode: Callable | None = None) -> Callable:
    """The attention function; `decode` computes a fused step from the layer's packed K and V (default: the
    kernels, `lowbit.kernels.decode_attention`; `lowbit.kernels.reference.decode_attention` gives float32
    attention over the same bytes, the yardstick both the kernels and the dense path are measured against)."""

    def lowbit_turbo_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling: float | None = None, **kwargs):
        cache = fused_cache() if key.shape[-2] == 0 else None  # a fused step always hands over empty K/V
        layer = cache.take_fused_step(module.layer_idx) if cache is not None else None
        if layer is None:  # dense K/V: prefill, or a layer the fused path does not cover
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        ks, vs = layer.k_store, layer.v_store
        lq, t = query.shape[2], len(ks)
        why = ("softcap" if kwargs.get("softcap") is not None else "dropout" if dropout else
               None if _causal_only(attention_mask, lq, t) else "attention mask is not only causal (padding)")
        if why is not None:
            cache.count_dense(why)
            backend = backend_for(layer.device)  # what update() would have returned
            return sdpa_attention_forward(module, query, backend.load(ks, query.dtype), backend.load(vs, query.dtype),
                                          attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        with on_device(query.device):
            out = (decode or kernels.decode_attention)(query, ks.packed, vs.packed, ks.codec, vs.codec,
                                                       scale=scaling, seq_len=t)
        cache.fused_steps += 1
        return out.transpose(1, 2).contiguous(), None

    return lowbit_turbo_attention


lowbit_turbo_attention = attention_function()


def register(decode: Callable | None = None) -> None:
    """Register the function (with `decode`, see attention_function), and SDPA's mask builder under the same name:
    transformers builds no mask at all (no padding, no sliding window) for an attention implementation without one."""
    AttentionInterface.register(NAME, attention_function(decode) if decode else lowbit_turbo_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def enable(model, decode: Callable | None = None, **cache_kwargs) -> QuantizedKVCache:
    """Register the function, make it the model's attention, and return a QuantizedKVCache that feeds it."""
    register(decode)
    model.set_attn_implementation(NAME)
    return QuantizedKVCache(model.config, fused_attention=True, **cache_kwargs)
