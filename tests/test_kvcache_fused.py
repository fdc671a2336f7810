"""The fused decode-attention hook: a real model (SmolLM2-135M, CPU) decodes the same tokens through
"lowbit_turbo" (packed stores -> lowbit.kernels.decode_attention, the reference off CUDA) as through the
cache's dense path with SDPA, and the hook really takes the packed path while decoding."""

from __future__ import annotations

import pytest
import torch

from lowbit.kernels import attention as fused
from lowbit.kvcache import QuantizedKVCache

STEPS = 6


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    from lowbit.eval.lm import load_model, load_tokenizer

    return load_model(smollm2_gguf), load_tokenizer(smollm2_gguf)


def _greedy(model, ids, cache):
    out = model(input_ids=ids, cache=cache, use_cache=True)
    toks, logits = [], []
    for _ in range(STEPS):
        nxt = out.logits[:, -1:].argmax(-1)
        toks.append(int(nxt))
        logits.append(out.logits[0, -1])
        out = model(input_ids=nxt, cache=cache, use_cache=True)
    return toks, torch.stack(logits)


def test_fused_hook_decodes_the_same_tokens(smollm2, monkeypatch):
    model, tok = smollm2
    from pydoc_data.topics import topics

    ids = tok(topics["assert"][:400], return_tensors="pt").input_ids
    calls = []
    from lowbit import kernels

    orig = kernels.decode_attention
    monkeypatch.setattr(kernels, "decode_attention", lambda *a, **k: calls.append(a[0].shape) or orig(*a, **k))
    before = model.config._attn_implementation
    try:
        with torch.no_grad():
            dense_toks, dense_logits = _greedy(model, ids, QuantizedKVCache(model.config, "turbo3", boundary=1))
            cache = fused.enable(model, kv_k="turbo3", boundary=1)
            fused_toks, fused_logits = _greedy(model, ids, cache)
    finally:
        model.set_attn_implementation(before)
    layers = model.config.num_hidden_layers
    assert len(calls) == STEPS * layers  # every decode step of every layer took the packed path
    assert fused_toks == dense_toks
    assert (fused_logits - dense_logits).abs().max() < 1e-3 * dense_logits.abs().max()


def test_padding_mask_falls_back_to_dense():
    assert fused._causal_only(None, 1, 5)
    causal = torch.ones(1, 1, 2, 5, dtype=torch.bool).tril(3)
    assert fused._causal_only(causal, 2, 5)
    padded = causal.clone()
    padded[..., 0] = False
    assert not fused._causal_only(padded, 2, 5)
