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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_gemma3_decodes_through_the_cuda_kernel(gemma3_gguf, monkeypatch):
    """Gemma 3 270M on the GPU: its global-attention layers (head_dim 256, 4 query heads per KV head, turbo3)
    decode through the CUDA split kernel, and give the same tokens as the dense path (torch quantizer,
    dequantize, SDPA)."""
    import copy

    from pydoc_data.topics import topics

    from lowbit.eval.lm import load_model, load_tokenizer
    from lowbit.kernels import cuda_decode

    if not cuda_decode.available("cuda"):
        pytest.skip("no NVRTC")
    model = copy.deepcopy(load_model(gemma3_gguf)).to("cuda")  # the loader's model is shared: copy it
    ids = load_tokenizer(gemma3_gguf)(topics["assert"][:400], return_tensors="pt").input_ids.cuda()
    launches = []
    orig = cuda_decode.stage1
    monkeypatch.setattr(cuda_decode, "stage1", lambda *a, **k: launches.append(a[0].shape) or orig(*a, **k))
    with torch.no_grad():
        dense_toks, dense_logits = _greedy(model, ids, QuantizedKVCache(model.config, "turbo3"))
        cache = fused.enable(model, kv_k="turbo3")
        fused_toks, fused_logits = _greedy(model, ids, cache)
    global_layers = sum(t == "full_attention" for t in model.config.layer_types)
    assert global_layers > 0 and len(launches) == STEPS * global_layers
    assert fused_toks == dense_toks
    assert (fused_logits - dense_logits).abs().max() < 2e-2 * dense_logits.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_llama_shaped_model_decodes_through_the_cuda_kernel(monkeypatch):
    """Where the real GGUFs are not installed (the lent GPU machine): a 2-layer Llama with Llama-3.1-8B's
    attention shape (32/8 heads of 128), random weights, decodes through the CUDA kernel via the cache hook
    with the logits of the dense path."""
    import transformers

    from lowbit.kernels import cuda_decode

    if not cuda_decode.available("cuda"):
        pytest.skip("no NVRTC")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=4096 // 4, intermediate_size=1024, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                                   max_position_embeddings=4096)
    model = transformers.LlamaForCausalLM(cfg).to("cuda").eval()
    ids = torch.randint(0, 512, (2, 300), device="cuda")
    launches = []
    orig = cuda_decode.stage1
    monkeypatch.setattr(cuda_decode, "stage1", lambda *a, **k: launches.append(a[0].shape) or orig(*a, **k))
    with torch.no_grad():
        cache = fused.enable(model, kv_k="turbo3")
        out = model(input_ids=ids, cache=cache, use_cache=True)  # prefill: dense K/V, SDPA
        nxt = out.logits[:, -1:].argmax(-1)
        step = model(input_ids=nxt, cache=cache, use_cache=True)
        model.set_attn_implementation("sdpa")
        ref_cache = QuantizedKVCache(cfg, "turbo3")  # the same codecs, dequantized for SDPA
        model(input_ids=ids, cache=ref_cache, use_cache=True)
        ref = model(input_ids=nxt, cache=ref_cache, use_cache=True)
    assert len(launches) == cfg.num_hidden_layers  # one decode step, every layer through the CUDA kernel
    err = (step.logits - ref.logits).abs().max() / ref.logits.abs().max()
    assert err < 1e-2
