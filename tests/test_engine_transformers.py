"""`--engine transformers`: the plan of transformers' own caches (DynamicCache, and lowbit's QuantizedKVCache),
held against the bytes the caches really hold: tiny models run here on the CPU (a sliding-window Gemma 3 and a
hybrid Qwen3.5, contexts that are not whole 256-cell blocks), and the real-size runs recorded on an H200
(docs/real_size_results/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import DynamicCache

from lowbit.cache import QuantizedKVCache, cache_kwarg, held_bytes
from lowbit.devices import budget
from lowbit.errors import LowbitError
from lowbit.models.catalog import ResolvedModel
from lowbit.models.config import from_hf_config
from lowbit.planning.engines import engine_model
from lowbit.planning.fit import fit
from lowbit.planning.planner import plan

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "real_size_results"


def _run(model, cache, n: int, batch: int, steps: int = 3) -> int:
    """A prefill of n tokens in two chunks, then `steps` greedy tokens: the tokens the cache has seen."""
    ids = torch.randint(0, model.config.vocab_size, (batch, n), generator=torch.Generator().manual_seed(2))
    kw = {cache_kwarg(model): cache}
    with torch.no_grad():
        out = model(input_ids=ids[:, : n // 2], use_cache=True, **kw)
        out = model(input_ids=ids[:, n // 2:], use_cache=True, **kw)
        for _ in range(steps):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), use_cache=True, **kw)
    return n + steps


def _planned(model, name: str, kv: str, tokens: int, batch: int, engine: str = "transformers"):
    k, _, v = kv.partition("/")
    cfg = from_hf_config(model.config.to_dict(), name=name)
    return plan(ResolvedModel(cfg), weights="BF16", kv_k=k, kv_v=v or k, context=tokens, sequences=batch,
                engine=engine)


@pytest.fixture(scope="module")
def gemma3():
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, sliding_window=16, max_position_embeddings=512)
    return transformers.Gemma3ForCausalLM(cfg).to(torch.bfloat16).eval()


@pytest.mark.parametrize("n", [10, 37])  # inside the window, and past it
def test_sliding_window_layers_hold_window_minus_one_tokens(gemma3, n):
    """Five sliding layers (window 16) and one full layer, batch 2: DynamicCache in bf16 and QuantizedKVCache in
    turbo3/q8_0 hold exactly the planned K/V, sliding layers min(tokens, 15), the full layer every token."""
    tokens = _run(gemma3, dense := DynamicCache(config=gemma3.config), n, batch=2)
    assert held_bytes(dense)["kv_live"] == _planned(gemma3, "tiny-gemma3", "bf16", tokens, 2).kv_bytes
    _run(gemma3, packed := QuantizedKVCache(gemma3.config, "turbo3", "q8_0"), n, batch=2)
    p = _planned(gemma3, "tiny-gemma3", "turbo3/q8_0", tokens, 2)
    assert packed.nbytes() == held_bytes(packed)["kv_live"] == p.kv_bytes
    window = min(tokens, gemma3.config.sliding_window - 1)
    assert p.kv_cells == {"full_attention": 2 * tokens, "sliding_attention": 2 * window}
    assert p.state_bytes == 0


def test_hybrid_kv_and_state_are_planned_to_the_byte():
    """Qwen3.5 (3 Gated DeltaNet + 1 attention layer), bf16, batch 2, 53 tokens (no 256-cell padding here, which
    llama.cpp's plan would add): K/V and the conv + recurrent states equal the transformers plan."""
    from conftest import skip_unless_qwen35_on_cpu

    skip_unless_qwen35_on_cpu()
    torch.manual_seed(0)
    cfg = transformers.Qwen3_5TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4, max_position_embeddings=512)
    model = transformers.Qwen3_5ForCausalLM(cfg).to(torch.bfloat16).eval()
    for kv, cache in (("bf16", DynamicCache(config=model.config)),
                      ("q8_0/turbo4", QuantizedKVCache(model.config, "q8_0", "turbo4"))):
        tokens = _run(model, cache, 50, batch=2)
        p = _planned(model, "tiny-qwen3.5", kv, tokens, 2)
        held = held_bytes(cache)
        assert (held["kv_live"], held["state"]) == (p.kv_bytes, p.state_bytes), kv
        llama = _planned(model, "tiny-qwen3.5", kv, tokens, 2, engine="llama.cpp")
        assert llama.kv_bytes == p.kv_bytes * 256 // tokens  # llama.cpp pads the 53 cells to 256


def _recorded_runs():
    for path in sorted(RESULTS.glob("qwen3.5-*_h200.json")):
        data = json.loads(path.read_text())
        if "runs" not in data or not isinstance(data["runs"], list):
            continue
        for run in data["runs"]:
            if run.get("after_prefill", {}).get("held") and not data["models"][0].get("layers_reduced"):
                yield pytest.param(run, id=f"{path.stem}-{run['context']}-{run['kv']}")


@pytest.mark.parametrize("run", list(_recorded_runs()))
def test_the_h200_runs_hold_what_the_plan_says(run):
    """Every one-GPU real-size run (27B and 35B-A3B, 32K and 128K, bf16, turbo3/turbo3, q8_0/turbo4): the K/V in
    use and the state after the prefill and after decoding equal `plan --engine transformers` to the byte."""
    k, _, v = run["kv"].partition("/")
    for moment in ("after_prefill", "after_decode"):
        m = run[moment]
        p = plan(run["model"], weights="BF16", kv_k=k, kv_v=v or k, context=m["tokens"], engine="transformers")
        assert (m["held"]["kv_live"], m["held"]["state"]) == (p.kv_bytes, p.state_bytes), moment


def test_recorded_runs_are_found():
    assert len(list(_recorded_runs())) >= 11  # 5 of the 27B (a sixth at 128K in its own file), 6 of the 35B-A3B


def test_one_device_only_and_named_in_every_figure():
    with pytest.raises(LowbitError, match="one device"):
        fit("qwen3.5-27b", budget("h200", gpus=2), "BF16", "turbo3", context=32768, engine="transformers")
    one = fit("qwen3.5-27b", "h200", "BF16", "turbo3", context=32768, engine="transformers")
    assert one.engine == "transformers" and one.fits
    p = plan("qwen3.5-27b", weights="BF16", kv="turbo3", context=1000, engine="transformers")
    assert p.kv_bytes == 16 * 4 * 1000 * 2 * 100  # 16 attention layers x 4 KV heads x 1,000 tokens x K+V x 100 B
    assert all(p.provenance()[key] for key in ("kv_bytes", "state_bytes", "runtime_bytes"))
    assert "estimated" in p.provenance()["runtime_bytes"] and "exact" in p.provenance()["kv_bytes"]
    assert engine_model("hf").name == engine_model("Transformers").name == "transformers"


def test_float_checkpoints_only_and_bf16_by_default():
    """transformers runs a checkpoint's float weights (a GGUF it loads dequantized), so a llama.cpp mix is refused
    rather than planned at a size transformers never holds; with no --weights it plans BF16, in fit too."""
    assert plan("qwen3.5-4b", context=1000, engine="transformers").scenario.mix.name == "BF16"
    assert plan("qwen3.5-4b", context=1000).scenario.mix.name == "Q4_K_M"  # llama.cpp keeps its default
    for weights in ("Q4_K_M", "Q1_0"):
        with pytest.raises(LowbitError, match="float checkpoints"):
            plan("qwen3.5-4b", weights=weights, engine="transformers")
    engine = engine_model("transformers")
    engine.check_weights("stored", gguf=False)  # a checkpoint's own safetensors: as stored
    with pytest.raises(LowbitError, match="dequantizes a GGUF"):
        engine.check_weights("stored", gguf=True)
    assert fit("qwen3.5-4b", "h200", kv_k="turbo3", context=8192, engine="transformers").weights == "BF16"


def test_simulate_under_transformers_compares_caches_at_the_same_weights(capsys):
    """Without --scenario, simulate's default columns (Q4_K_M, Q1_0) are llama.cpp's; under transformers it puts
    f16 K/V beside turbo3 (or --kv) at BF16 weights, and a llama.cpp mix given as a scenario is one error line."""
    from lowbit.cli import main

    assert main(["simulate", "--engine", "transformers", "--models", "qwen3.5-27b", "--context", "32k",
                 "--kv", "q8_0/turbo4", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["weights"], s["kv_k"], s["kv_v"]) for s in data["scenarios"]] == [
        ("f16", "BF16", "f16", "f16"), ("q8_0/turbo4", "BF16", "q8_0", "turbo4")]
    f16, packed = data["rows"]
    assert f16["weights_bytes"] == packed["weights_bytes"] and packed["kv_bytes"] < f16["kv_bytes"]
    assert main(["simulate", "--engine", "transformers", "--scenario", "a=Q4_K_M+f16"]) == 2
    assert "float checkpoints" in capsys.readouterr().err
