"""QuantizedKVCache: a real transformers Cache storing packed K/V, on tiny random Llama and Gemma 3 models."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM
from transformers import Gemma3ForCausalLM

from lowbit.errors import LowbitError
from lowbit.formats.kv import KV_FORMATS
from lowbit.cache import (QuantizedKVCache, TorchBackend, backend_for, cache_kwarg, layer_plan, make_store,
                          register_backend)

SEQ = 45  # not a multiple of 32 (KIVI groups) nor of any block


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def gemma():
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=64, sliding_window=8,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=256)
    return Gemma3ForCausalLM(cfg).eval()


def _run(model, cache, ids, chunks=(20, 1, 1, 23)):
    """Prefill then decode/chunks through the cache; logits of every position."""
    out, s = [], 0
    with torch.inference_mode():
        for n in chunks:
            pos = torch.arange(s, s + n).unsqueeze(0)
            out.append(model(input_ids=ids[:, s : s + n], position_ids=pos, use_cache=True,
                             **{cache_kwarg(model): cache}).logits)
            s += n
    return torch.cat(out, 1)


def _ids(vocab=97, n=SEQ, batch=1):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_f32_cache_is_lossless_and_matches_dynamic_cache(which, request):
    """Same logits as transformers' DynamicCache, sliding windows (Gemma, window 8) included."""
    model = request.getfixturevalue(which)
    ids = _ids()
    ref = _run(model, DynamicCache(config=model.config), ids)
    ours = _run(model, QuantizedKVCache(model.config, "f32"), ids)
    assert torch.allclose(ours, ref, atol=1e-5)
    f16 = _run(model, QuantizedKVCache(model.config, "f16"), ids)
    assert torch.allclose(f16, ref, atol=5e-3)


@pytest.mark.parametrize("spec", ["turbo4", "turbo3", "turbo2", "turbo3-prod", "turbo3.5", "turbo2.5", "turbo3:center",
                                  "q8_0", "q4_0", "q4_0:rot", "iq4_nl", "fp8", "kivi4", "kivi2"])
def test_every_format_runs_and_stores_exact_bytes(llama, spec):
    ids = _ids(batch=2)
    cache = QuantizedKVCache(llama.config, spec)
    logits = _run(llama, cache, ids)
    assert torch.isfinite(logits).all()
    cfg, fmt = llama.config, KV_FORMATS[spec.split(":")[0]]
    vb = fmt.vector_bytes(cfg.head_dim)
    per_layer_vectors = 2 * cfg.num_key_value_heads * SEQ  # batch 2
    if fmt.key_token_group:  # keys: one full group of 32 quantized, 13 tokens in the fp16 residual
        k_bytes = 2 * cfg.num_key_value_heads * (32 * vb + 13 * cfg.head_dim * 2)
        assert cache.nbytes() == cfg.num_hidden_layers * (k_bytes + per_layer_vectors * vb)
    else:
        assert cache.nbytes() == cfg.num_hidden_layers * 2 * per_layer_vectors * vb
    for layer in cache.layers:
        store = layer.v_store
        assert store.packed.dtype == torch.uint8 and store.packed.shape == (2, 2, SEQ, vb)
    assert cache.get_seq_length() == SEQ


def test_quality_orders_as_bits(llama):
    ids = _ids(n=40)
    ref = _run(llama, DynamicCache(config=llama.config), ids, chunks=(40,))
    err = {s: float((_run(llama, QuantizedKVCache(llama.config, s), ids, chunks=(40,)) - ref).pow(2).mean())
           for s in ("q8_0", "turbo4", "turbo2")}
    assert err["q8_0"] < err["turbo4"] < err["turbo2"]


def test_k_and_v_settings_apart_and_per_layer(llama):
    cache = QuantizedKVCache(llama.config, "q8_0", "turbo3", boundary=1, per_layer={2: ("turbo4", "kivi2")})
    names = [(k.name, v.name) for k, v in cache.plan]
    assert names == [("f16", "f16"), ("q8_0", "turbo3"), ("turbo4", "kivi2"), ("f16", "f16")]
    _run(llama, cache, _ids(n=10), chunks=(10,))
    assert cache.layers[1].k_store.packed.shape[-1] == KV_FORMATS["q8_0"].vector_bytes(32)
    assert cache.layers[1].v_store.packed.shape[-1] == KV_FORMATS["turbo3"].vector_bytes(32)
    assert layer_plan(30, "turbo3", boundary=2)[2][0].name == "turbo3"
    assert layer_plan(30, "turbo3", boundary=2)[28][0].name == "f16"


def test_bad_settings_are_lowbit_errors(llama):
    for kw in ({"kv_k": "turbo7"}, {"kv_k": "turbo3", "boundary": 3}, {"kv_k": "q4_0", "per_layer": {9: ("f16", "f16")}}):
        with pytest.raises(LowbitError):
            QuantizedKVCache(llama.config, **kw)
    cfg = llama.config.__class__(**{**llama.config.to_dict(), "head_dim": 48})
    with pytest.raises(LowbitError):
        QuantizedKVCache(cfg, "q4_0")  # 48 is not a multiple of 32
    QuantizedKVCache(cfg, "turbo3")  # turbo pads 48 -> 64


def test_empty_cache_reset_and_zero_length_update(llama):
    cache = QuantizedKVCache(llama.config, "turbo3")
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0
    k = torch.zeros(1, 2, 0, 32)
    out_k, out_v = cache.update(k, k, 0)
    assert out_k.shape == (1, 2, 0, 32)
    assert cache.get_seq_length() == 0
    _run(llama, cache, _ids(n=5), chunks=(5,))
    assert cache.get_seq_length() == 5
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0
    with pytest.raises(LowbitError):
        cache.layers[0].crop(-1)


def test_zero_and_nonfinite_states_through_the_cache(llama):
    cache = QuantizedKVCache(llama.config, "turbo3")
    k = torch.randn(1, 2, 4, 32)
    k[0, 0, 0] = 0
    k[0, 1, 1, 3] = float("inf")
    out_k, _ = cache.update(k, k.clone(), 0)
    assert torch.equal(out_k[0, 0, 0], torch.zeros(32))
    assert torch.isnan(out_k[0, 1, 1]).all()
    assert torch.isfinite(out_k[0, 0, 1:]).all()


def test_sliding_window_keeps_only_the_window(gemma):
    cache = QuantizedKVCache(gemma.config, "turbo4")
    _run(gemma, cache, _ids())
    sliding, full = cache.layers[0], cache.layers[2]
    assert sliding.is_sliding and not full.is_sliding
    assert len(sliding.k_store) == 7 and len(full.k_store) == SEQ
    assert cache.get_mask_sizes(1, 0) == (8, SEQ - 7)


def test_generate_and_beam_search(llama):
    ids = _ids(n=6)
    out = llama.generate(ids, past_key_values=QuantizedKVCache(llama.config, "turbo4"), max_new_tokens=4,
                         do_sample=False)
    assert out.shape == (1, 10)
    out = llama.generate(ids, past_key_values=QuantizedKVCache(llama.config, "kivi4"), max_new_tokens=3,
                         num_beams=2, do_sample=False)
    assert out.shape[-1] == 9


def test_device_backend_seam(llama):
    calls = []

    class Counting(TorchBackend):
        def store(self, store, x):
            calls.append(x.shape[-2])
            super().store(store, x)

    register_backend("cpu", Counting())
    try:
        assert isinstance(backend_for(torch.device("cpu")), Counting)
        _run(llama, QuantizedKVCache(llama.config, "turbo3"), _ids(n=3), chunks=(3,))
    finally:
        register_backend("cpu", TorchBackend())
    assert calls == [3] * (2 * llama.config.num_hidden_layers)


def test_vector_store_appends_without_copying_the_cache():
    """Decode steps copy only their own vectors: the buffer doubles (a handful of reallocations for 300 steps),
    the view holds exactly what concatenation would, back to back, and a sliding window keeps the newest."""
    store = make_store("turbo3", 64, keys=True, seed=1)
    xs = [torch.randn(2, 3, n, 64, generator=torch.Generator().manual_seed(n)) for n in [20] + [1] * 300]
    buffers = set()
    for x in xs:
        store.append(x)
        buffers.add(store._buf.data_ptr())
    want = store.codec.quantize(torch.cat(xs, dim=-2))
    assert torch.equal(store.packed, want) and len(store) == 320
    assert len(buffers) <= 6  # 16 -> 40 -> 80 -> 160 -> 320 -> ... capacities, not one per step
    assert store.packed.stride(-2) == store.codec.vector_bytes and store.packed.stride(-1) == 1
    store.keep_last(8)
    assert torch.equal(store.packed, want[..., -8:, :])
    store.append(xs[1])
    assert torch.equal(store.packed[..., -1:, :], store.codec.quantize(xs[1])) and len(store) == 9
    store.index_batch(lambda t: t.index_select(0, torch.tensor([1])))
    assert store.packed.shape[:2] == (1, 3) and len(store) == 9
    store.append(xs[2][1:])
    assert len(store) == 10


def test_vector_store_reserve_keeps_one_buffer():
    """After reserve(n), appends up to n vectors in all land in the same buffer, and the bytes are unchanged."""
    store = make_store("turbo3", 64, keys=True, seed=2)
    xs = [torch.randn(1, 2, n, 64, generator=torch.Generator().manual_seed(n)) for n in [5] + [1] * 40]
    store.append(xs[0])
    store.reserve(45)
    ptr = store._buf.data_ptr()
    for x in xs[1:]:
        store.append(x)
    assert store._buf.data_ptr() == ptr and len(store) == 45
    assert torch.equal(store.packed, store.codec.quantize(torch.cat(xs, dim=-2)))
    store.reserve(10)  # already room: nothing moves
    assert store._buf.data_ptr() == ptr
    with pytest.raises(LowbitError):
        make_store("turbo3", 64, keys=True).reserve(4)
