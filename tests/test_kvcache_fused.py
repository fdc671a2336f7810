"""The fused decode-attention hook: models decode the same tokens through "lowbit_turbo" (packed stores ->
lowbit.kernels.decode_attention, the reference off CUDA) as through the cache's dense path with SDPA, and the
cache's counters show every decode step took the packed path (or say why it did not)."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from lowbit import kernels
from lowbit.cache import QuantizedKVCache, cache_kwarg
from lowbit.cache import attention as fused
from lowbit.errors import LowbitError

STEPS = 6


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    from lowbit.eval.lm import load_model, load_tokenizer

    return load_model(smollm2_gguf), load_tokenizer(smollm2_gguf)


def _step(model, ids, cache, **kw):
    return model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache}, **kw)


def _greedy(model, ids, cache):
    out = _step(model, ids, cache)
    toks, logits = [], []
    for _ in range(STEPS):
        nxt = out.logits[:, -1:].argmax(-1)
        toks.append(nxt[:, 0].tolist())
        logits.append(out.logits[:, -1])
        out = _step(model, nxt, cache)
    return toks, torch.stack(logits)


def _tiny_llama(head_dim=64, layers=2):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                                   max_position_embeddings=512)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_tiny_llama_decodes_through_the_packed_path():
    """A Llama-shaped random model on the CPU: every decode step of every layer reads the packed stores
    (the reference kernels), with the dense path's tokens and logits."""
    model = _tiny_llama()
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    calls = []
    orig = kernels.decode_attention
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "decode_attention", lambda *a, **k: calls.append(a[0].shape) or orig(*a, **k))
        dense = QuantizedKVCache(model.config, "turbo3", "q8_0")
        dense_toks, dense_logits = _greedy(model, ids, dense)
        cache = fused.enable(model, kv_k="turbo3", kv_v="q8_0")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no dense fallback, so no warning
            fused_toks, fused_logits = _greedy(model, ids, cache)
    layers = model.config.num_hidden_layers
    assert cache.fused_steps == STEPS * layers and len(calls) == STEPS * layers
    assert cache.dense_fallbacks == 0 and not cache.fallback_reasons
    assert dense.fused_steps == 0 and dense.dense_fallbacks == 0  # not asked to fuse: nothing counted
    assert fused_toks == dense_toks
    assert (fused_logits - dense_logits).abs().max() < 1e-4 * dense_logits.abs().max()


def test_tiny_gemma3_sliding_layers_keep_their_window_and_count_as_dense():
    """Gemma 3 shape (two sliding-window layers of 8, one global): the prefill is longer than the window, so
    the fused model must get the same sliding masks as SDPA; its global layer decodes from the packed stores,
    the sliding ones attend densely over their window (counted, with the reason)."""
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=64, sliding_window=8,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                        max_position_embeddings=256)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (1, 45), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense_toks, dense_logits = _greedy(model, ids, QuantizedKVCache(model.config, "turbo4"))
        cache = fused.enable(model, kv_k="turbo4")
        with pytest.warns(UserWarning, match="sliding-window layer"):
            fused_toks, fused_logits = _greedy(model, ids, cache)
        model.set_attn_implementation("sdpa")
    assert cache.fused_steps == STEPS and cache.fallback_reasons == {"sliding-window layer": 2 * STEPS}
    assert fused_toks == dense_toks
    assert (fused_logits - dense_logits).abs().max() < 1e-4 * dense_logits.abs().max()


def test_a_fused_step_can_be_computed_by_another_decode_function():
    """enable(decode=...) computes every fused step with that function (benchmarks/decode_e2e.py checks the kernels
    against float32 attention over the same bytes this way); enable() without it is back on the kernels."""
    from lowbit.kernels import reference

    model = _tiny_llama(head_dim=32)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    layers, chosen, default = model.config.num_hidden_layers, [], []
    orig = kernels.decode_attention
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "decode_attention", lambda *a, **k: default.append(1) or orig(*a, **k))
        cache = fused.enable(model, decode=lambda *a, **k: chosen.append(1) or reference.decode_attention(*a, **k),
                             kv_k="turbo3")
        toks, _ = _greedy(model, ids, cache)
        assert len(chosen) == cache.fused_steps == STEPS * layers and not default
        again = fused.enable(model, kv_k="turbo3")
        assert _greedy(model, ids, again)[0] == toks
        assert len(default) == again.fused_steps == STEPS * layers and len(chosen) == STEPS * layers
    model.set_attn_implementation("sdpa")


def test_dense_fallbacks_are_counted_and_warned_once():
    model = _tiny_llama(head_dim=32)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(2))
    layers = model.config.num_hidden_layers
    with torch.no_grad():
        fused.enable(model)
        # KIVI keys are packed per channel over 32 tokens: no decode kernel reads them
        cache = QuantizedKVCache(model.config, "kivi2", "turbo3", fused_attention=True)
        with pytest.warns(UserWarning, match="groups of 32 tokens") as caught:
            toks, _ = _greedy(model, ids, cache)
        assert len(caught) == 1  # once, not once per step
        assert cache.fused_steps == 0 and cache.dense_fallbacks == STEPS * layers
        (reason,) = cache.fallback_reasons
        # the model's attention is not the fused one
        model.set_attn_implementation("sdpa")
        cache = QuantizedKVCache(model.config, "turbo3", fused_attention=True)
        with pytest.warns(UserWarning, match="'sdpa', not 'lowbit_turbo'"):
            _greedy(model, ids, cache)
        assert cache.fused_steps == 0 and cache.dense_fallbacks == STEPS * layers
        # a padding mask: the attention function attends densely over the dequantized cache
        fused.enable(model)
        cache = QuantizedKVCache(model.config, "turbo3", fused_attention=True)
        mask = torch.ones(1, 41, dtype=torch.long)
        mask[0, 0] = 0
        _step(model, ids, cache, attention_mask=mask[:, :40])
        with pytest.warns(UserWarning, match="padding"):
            _step(model, ids[:, :1], cache, attention_mask=mask)
        assert cache.fused_steps == 0 and cache.dense_fallbacks == layers


def test_a_fused_step_nobody_reads_is_an_error():
    """update() handed over empty K/V; if the model's attention never takes the step, the next one fails."""
    model = _tiny_llama(head_dim=32)
    fused.enable(model)
    cache = QuantizedKVCache(model.config, "turbo3", fused_attention=True)
    k = torch.randn(1, 2, 1, 32)
    assert cache.update(k, k, 0)[0].shape[-2] == 0
    with pytest.raises(LowbitError, match="did not read"):
        cache.update(k, k, 0)


def test_fused_hook_decodes_the_same_tokens(smollm2, monkeypatch):
    model, tok = smollm2
    from pydoc_data.topics import topics

    ids = tok(topics["assert"][:400], return_tensors="pt").input_ids
    calls = []
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
    assert cache.fused_steps == STEPS * layers and cache.dense_fallbacks == 0
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
    sliding_layers = model.config.num_hidden_layers - global_layers
    assert global_layers > 0 and len(launches) == STEPS * global_layers
    assert cache.fused_steps == STEPS * global_layers
    assert cache.fallback_reasons == {"sliding-window layer": STEPS * sliding_layers}
    assert fused_toks == dense_toks
    assert (fused_logits - dense_logits).abs().max() < 2e-2 * dense_logits.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("kv", ["turbo3/turbo3", "q8_0/turbo3", "q8_0/turbo4", "turbo4/turbo4"])
def test_llama_shaped_model_decodes_through_the_cuda_kernel(monkeypatch, kv):
    """Where the real GGUFs are not installed (the lent GPU machine): a 2-layer Llama with Llama-3.1-8B's
    attention shape (32/8 heads of 128), random weights, decodes through the CUDA kernel via the cache hook
    with the logits of the dense path, for each setting the kernel takes."""
    import transformers

    from lowbit.kernels import cuda_decode

    if not cuda_decode.available("cuda"):
        pytest.skip("no NVRTC")
    kf, vf = kv.split("/")
    assert kernels.supports(kf, vf, 128, "cuda").decode == "cuda"
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
        cache = fused.enable(model, kv_k=kf, kv_v=vf)
        out = _step(model, ids, cache)  # prefill: dense K/V, SDPA
        nxt = out.logits[:, -1:].argmax(-1)
        step = _step(model, nxt, cache)
        model.set_attn_implementation("sdpa")
        ref_cache = QuantizedKVCache(cfg, kf, vf)  # the same codecs, dequantized for SDPA
        _step(model, ids, ref_cache)
        ref = _step(model, nxt, ref_cache)
    assert len(launches) == cfg.num_hidden_layers  # one decode step, every layer through the CUDA kernel
    assert cache.fused_steps == cfg.num_hidden_layers and cache.dense_fallbacks == 0
    err = (step.logits - ref.logits).abs().max() / ref.logits.abs().max()
    assert err < 1e-2
