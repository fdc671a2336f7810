"""Qwen3.5's hybrid layers through QuantizedKVCache: Gated DeltaNet layers keep transformers' own conv and
recurrent states, full-attention layers store packed K/V and decode through the fused path; the state
bytes are what transformers allocates, and lowbit's plan accounts for them to the byte."""

from __future__ import annotations

import pytest
from conftest import skip_unless_qwen35_on_cpu
import torch
import transformers
from transformers import DynamicCache

from lowbit.cache import QuantizedKVCache, QuantizedKVLayer, cache_kwarg, held_bytes
from lowbit.cache import attention as fused
from lowbit.errors import LowbitError
from lowbit.models.catalog import ResolvedModel
from lowbit.models.config import FULL, LINEAR, from_hf_config
from lowbit.planning.engines import VLLM
from lowbit.planning.planner import plan

skip_unless_qwen35_on_cpu()

STEPS = 6


def _qwen35(dtype=torch.float32, layers=4):
    torch.manual_seed(0)
    cfg = transformers.Qwen3_5TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4, max_position_embeddings=512)
    return transformers.Qwen3_5ForCausalLM(cfg).to(dtype).eval()


@pytest.fixture(scope="module")
def qwen35():
    return _qwen35()


def _ids(n=40, batch=1):
    return torch.randint(0, 128, (batch, n), generator=torch.Generator().manual_seed(1))


def _greedy(model, ids, cache, chunks=(20, 20)):
    """A prefill in two chunks of more than FUSED_MAX_NEW tokens (the second continues the Gated DeltaNet
    states), then STEPS greedy steps."""
    kw = {cache_kwarg(model): cache}
    s = 0
    with torch.no_grad():
        for n in chunks:
            out = model(input_ids=ids[:, s:s + n], use_cache=True, **kw)
            s += n
        toks, logits = [], []
        for _ in range(STEPS):
            nxt = out.logits[:, -1:].argmax(-1)
            toks.append(nxt[:, 0].tolist())
            logits.append(out.logits[:, -1])
            out = model(input_ids=nxt, use_cache=True, **kw)
    return toks, torch.stack(logits)


def test_linear_attention_layers_are_transformers_own(qwen35):
    cache = QuantizedKVCache(qwen35.config, "turbo3")
    ref = DynamicCache(config=qwen35.config)
    for kind, ours, theirs in zip(qwen35.config.layer_types, cache.layers, ref.layers):
        if kind == "linear_attention":
            assert type(ours) is type(theirs)
        else:
            assert isinstance(ours, QuantizedKVLayer)


def test_boundary_layers_are_attention_layers():
    """boundary=n keeps the first and last n layers with a KV cache in f16 (here layers 3 and 7 of 8)."""
    model = _qwen35(layers=8)
    cache = QuantizedKVCache(model.config, "turbo3", boundary=1)
    kv = [(i, layer.k_spec.name, layer.v_spec.name) for i, layer in enumerate(cache.layers)
          if isinstance(layer, QuantizedKVLayer)]
    assert kv == [(3, "f16", "f16"), (7, "f16", "f16")]
    assert [i for i, kind in enumerate(model.config.layer_types) if kind == "full_attention"] == [3, 7]
    with pytest.raises(LowbitError, match="boundary must be between 0 and 1 for 2 layers"):
        QuantizedKVCache(model.config, "turbo3", boundary=2)


def test_f32_cache_keeps_the_dynamic_cache_states_and_f16_its_tokens(qwen35):
    """Lossless K/V (f32): the same logits and bit-identical conv/recurrent states as DynamicCache after a
    chunked prefill and decoding; f16 K/V: the same greedy tokens."""
    ids = _ids()
    ref = DynamicCache(config=qwen35.config)
    ref_toks, ref_logits = _greedy(qwen35, ids, ref)
    f32 = QuantizedKVCache(qwen35.config, "f32")
    toks, logits = _greedy(qwen35, ids, f32)
    assert toks == ref_toks
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for i, kind in enumerate(qwen35.config.layer_types):
        if kind == "linear_attention":
            assert torch.equal(f32.layers[i].conv_states[0], ref.layers[i].conv_states[0])
            assert torch.equal(f32.layers[i].recurrent_states[0], ref.layers[i].recurrent_states[0])
    assert f32.get_seq_length() == ref.get_seq_length() == ids.shape[1] + STEPS
    f16_toks, _ = _greedy(qwen35, ids, QuantizedKVCache(qwen35.config, "f16"))
    assert f16_toks == ref_toks


def test_turbo3_decodes_through_the_fused_path(qwen35):
    """Every decode step of the full-attention layer reads the packed stores (none falls back), with the
    logits of the dense path over the same quantized cache."""
    ids = _ids(batch=2)
    dense = QuantizedKVCache(qwen35.config, "turbo3")
    dense_toks, dense_logits = _greedy(qwen35, ids, dense)
    try:
        cache = fused.enable(qwen35, kv_k="turbo3")
        toks, logits = _greedy(qwen35, ids, cache)
    finally:
        qwen35.set_attn_implementation("sdpa")
    attention_layers = qwen35.config.layer_types.count("full_attention")
    assert fused.fused_cache() is None  # nothing pending: the thread holds no reference to the cache
    assert cache.fused_steps == STEPS * attention_layers and cache.dense_fallbacks == 0
    assert not cache.fallback_reasons
    assert toks == dense_toks
    assert (logits - dense_logits).abs().max() < 1e-4 * dense_logits.abs().max()


def test_held_bytes_count_live_capacity_state_and_codecs(qwen35):
    ids = _ids()
    ref = DynamicCache(config=qwen35.config)
    _greedy(qwen35, ids, ref)
    cache = QuantizedKVCache(qwen35.config, "turbo3")
    _greedy(qwen35, ids, cache)
    ours, theirs = held_bytes(cache), held_bytes(ref)
    tokens = ids.shape[1] + STEPS
    assert theirs["kv_live"] == theirs["kv_capacity"] == tokens * 2 * 64 * 4  # K and V, one head, float32
    assert ours["kv_live"] == cache.nbytes() < ours["kv_capacity"]  # the stores grew by doubling
    assert ours["state"] == theirs["state"] == cache.state_nbytes() > 0
    assert ours["other"] > 0 == theirs["other"]  # turbo3's rotation matrices and codebooks


def test_state_and_kv_bytes_are_what_the_plan_says(tmp_path):
    """bf16 model, batch 2: transformers keeps the conv window in the model dtype (kernel-size columns) and
    the recurrent state in float32; llama.cpp's plan holds kernel-1 columns in f32, vLLM's kernel-1 in the
    model dtype: the measured bytes equal each plan up to exactly that difference. K/V bytes equal the plan
    where the context is whole 256-cell blocks."""
    model = _qwen35(torch.bfloat16)
    ids = _ids(n=256, batch=2)
    cache = QuantizedKVCache(model.config, "q8_0", "turbo4")
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache})
    states = [(layer.conv_states[0], layer.recurrent_states[0]) for layer, kind
              in zip(cache.layers, model.config.layer_types) if kind == "linear_attention"]
    assert {c.dtype for c, _ in states} == {torch.bfloat16} and {r.dtype for _, r in states} == {torch.float32}

    cfg = from_hf_config(model.config.to_dict(), name="tiny-qwen3.5")
    resolved = ResolvedModel(cfg)
    n_linear, conv_dim, k = cfg.count(LINEAR), cfg.gdn_conv_dim, cfg.linear_conv_kernel_dim
    ssm = cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
    measured = cache.state_nbytes()
    assert measured == held_bytes(cache)["state"] == 2 * n_linear * (k * conv_dim * 2 + ssm)

    llama = plan(resolved, weights="BF16", kv_k="q8_0", kv_v="turbo4", context=256, sequences=2)
    assert measured == llama.state_bytes - 2 * n_linear * conv_dim * ((k - 1) * 4 - k * 2)
    vllm = VLLM()
    assert measured == 2 * n_linear * (vllm.mamba_page_bytes(cfg) + conv_dim * vllm.model_dtype_bytes)
    assert cfg.count(FULL) == 1 and cache.nbytes() == llama.kv_bytes
