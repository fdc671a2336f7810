"""The "lowbit_turbo" attention function: decode attention straight from a QuantizedKVCache's packed stores.

    from lowbit.kernels.attention import enable
    cache = enable(model, kv_k="turbo3")      # registers the function, sets it on the model, returns the cache
    model.generate(ids, past_key_values=cache, ...)

With `QuantizedKVCache(..., fused_attention=True)`, a full-attention layer that gets a few new tokens
(decoding) returns empty K/V tagged with itself; this function then calls `lowbit.kernels.decode_attention`
on the layer's packed K and V (on CUDA the fused kernels: CUDA for turbo3, Triton for turbo2/4 and mixes;
the reference elsewhere).
Everything else (prefill, sliding-window layers, KIVI keys, a padding mask, softcap) gets dense K/V and
torch's SDPA, exactly as the "sdpa" implementation would.
"""

from __future__ import annotations

import torch

NAME = "lowbit_turbo"


def _causal_only(mask: torch.Tensor | None, lq: int, t: int) -> bool:
    """True when the mask is nothing but causal over the last lq of t positions (no padding)."""
    if mask is None:
        return True
    allowed = mask if mask.dtype == torch.bool else mask == 0
    want = torch.arange(t, device=mask.device)[None, :] <= (t - lq + torch.arange(lq, device=mask.device))[:, None]
    return allowed.shape[-2:] == (lq, t) and bool((allowed == want).all())


def lowbit_turbo_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lowbit import kernels
    from lowbit.kvcache import backend_for

    layer = getattr(key, "lowbit_layer", None)
    if layer is None:  # dense K/V: prefill, or a layer the fused path does not cover
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    ks, vs = layer.k_store, layer.v_store
    lq, t = query.shape[2], len(ks)
    if kwargs.get("softcap") is not None or dropout or not _causal_only(attention_mask, lq, t):
        backend = backend_for(layer.device)  # what update() would have returned
        return sdpa_attention_forward(module, query, backend.load(ks, query.dtype), backend.load(vs, query.dtype),
                                      attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    out = kernels.decode_attention(query, ks.packed, vs.packed, ks.codec, vs.codec, scale=scaling, seq_len=t)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, lowbit_turbo_attention)


def enable(model, **cache_kwargs):
    """Register the function, make it the model's attention, and return a QuantizedKVCache that feeds it."""
    from lowbit.kvcache import QuantizedKVCache

    register()
    model.set_attn_implementation(NAME)
    return QuantizedKVCache(model.config, fused_attention=True, **cache_kwargs)
