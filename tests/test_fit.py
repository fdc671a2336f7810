"""lowbit fit: JSON contract, real GGUF files, offload plans, tensor parallel, and one-line errors."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest

from lowbit.cli import main
from lowbit.devices import budget
from lowbit.planning.engines import VLLM, _ot_pattern, shard_config
from lowbit.planning.fit import Costs, fit, fitting_devices
from lowbit.planning.planner import plan
from lowbit.models.catalog import resolve

ISSUE_KEYS = {"model", "device", "memory_bytes", "weights", "kv_k", "kv_v", "context", "fits", "headroom_bytes",
              "max_context", "best_weights", "offload"}


def _json(argv, capsys):
    assert main(argv + ["--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_issue_keys(capsys):
    d = _json(["fit", "qwen3.5-27b", "--device", "rtx-4090", "--context", "32768"], capsys)
    assert ISSUE_KEYS <= d.keys() and {"layers_on_cpu", "bytes_on_cpu"} <= d["offload"].keys()
    assert d["memory_bytes"] == 24 * 2**30 and d["weights"] == "Q4_K_M" and d["kv_k"] == d["kv_v"] == "f16"
    assert d["fits"] and d["headroom_bytes"] == d["usable_bytes"] - d["need_bytes"] > 0
    # llama.cpp on a GPU: everything but token_embd (kept in host RAM) counts on the device
    p = plan("qwen3.5-27b", context=32768)
    embd = next((t.bytes + 31) // 32 * 32 for t in p.tensors if t.name == "token_embd.weight")
    assert d["need_bytes"] == p.total_bytes - embd and d["host_bytes"] == embd
    assert all(v for v in d["assumptions"].values())


def test_max_context_is_reported_against_the_model_cap(capsys):
    d = _json(["fit", "qwen3.5-0.8b", "--device", "h100-80gb"], capsys)
    assert d["max_context"] == 262_144 and d["max_context_limited_by"] == "model"
    d = _json(["fit", "qwen3.5-27b", "--device", "rtx-4090"], capsys)
    assert d["max_context"] % 256 == 0 and d["max_context_limited_by"] == "memory"  # llama.cpp pads to 256


def test_family_on_a_laptop(capsys):
    d = _json(["fit", "--family", "qwen3.5", "--device", "laptop-16gb"], capsys)
    rows = {r["model"]: r for r in d["results"]}
    assert len(rows) == 8 and not rows["qwen3.5-397b-a17b"]["fits"] and rows["qwen3.5-0.8b"]["fits"]
    assert rows["qwen3.5-397b-a17b"]["max_context"] is None and rows["qwen3.5-397b-a17b"]["best_weights"] is None
    maxes = [rows[m]["max_context"] or 0 for m in ("qwen3.5-9b", "qwen3.5-27b")]
    assert maxes[0] > maxes[1]


def test_moe_offload_moves_experts_before_layers():
    r = fit("qwen3.5-122b-a10b", budget("rtx-4090"), context=32768)
    off = r.offload
    assert not r.fits and off["layers_on_cpu"] == 0 and 0 < off["expert_layers_on_cpu"] < 48
    assert off["bytes_on_gpu"] <= r.limit and "--n-cpu-moe" in off["llama_args"]
    # one expert layer fewer on the CPU no longer fits: the answer is the smallest
    costs = Costs("qwen3.5-122b-a10b", budget("rtx-4090"))
    fewer = _gpu_bytes(costs, 32768, off["gpu_layers"], off["expert_layers_on_cpu"] - 1)
    assert fewer > r.limit
    # nothing is lost: GPU + CPU hold every byte the simulator counts, plus the compute buffer on the GPU
    p = plan("qwen3.5-122b-a10b", context=32768)
    assert off["bytes_on_gpu"] + off["bytes_on_cpu"] == p.weights_bytes + p.kv_bytes + p.state_bytes + p.runtime_bytes


def test_dense_offload_keeps_whole_layers_on_the_cpu():
    r = fit("qwen3.5-27b", budget("rtx-3060"), context=131072)
    off = r.offload
    assert not r.fits and off["expert_layers_on_cpu"] == 0 and 0 < off["layers_on_cpu"] < 64
    assert off["bytes_on_gpu"] <= r.limit
    costs = Costs("qwen3.5-27b", budget("rtx-3060"))
    assert _gpu_bytes(costs, 131072, off["gpu_layers"] + 1, 0) > r.limit


def _embd(p):
    return sum((t.bytes + 31) // 32 * 32 for t in p.tensors if t.name == "token_embd.weight")


def _gpu_bytes(costs, context, ngl, cpu_moe):
    """Independent recount of what llama.cpp puts on the GPU for -ngl / --n-cpu-moe."""
    split = costs.placement
    n = len(split.layer_dense)
    cache = costs.engine.layer_cache_bytes(costs.cfg, costs.k, costs.v, context, 1)
    b = costs.engine.allocate(costs.cfg, costs.k, costs.v, context, 1).runtime_bytes
    b += split.outside if ngl == n else 0
    for i in range(n - ngl, n):
        b += split.layer_dense[i] + cache[i] + (split.layer_experts[i] if i >= cpu_moe else 0)
    return b


def test_override_tensor_pattern_matches_exactly_the_first_layers():
    import re

    pat = re.compile(_ot_pattern(12).split("=")[0])
    assert pat.search("blk.11.ffn_up_exps.weight") and pat.search("blk.0.ffn_down_exps.weight")
    assert not pat.search("blk.12.ffn_up_exps.weight") and not pat.search("blk.1.ffn_up_shexp.weight")


def test_vllm_tensor_parallel_shards_kv_heads_and_replicates_when_fewer():
    cfg = resolve("qwen3.5-27b").config  # 4 KV heads
    assert set(shard_config(cfg, 2).num_kv_heads) == {0, 2}
    assert set(shard_config(cfg, 8).num_kv_heads) == {0, 1}  # replicated: one head per GPU
    # a dense model: KV per GPU divides by the GPU count until one KV head per GPU, then stays
    kv = {n: Costs("llama-3.1-8b", budget("h100-80gb", gpus=n), engine="vllm").need(65536).kv_bytes
          for n in (1, 8, 16)}
    assert kv[16] == kv[8] == kv[1] // 8


def test_impossible_split_is_one_line_exit_2(capsys):
    assert main(["fit", "qwen3.5-27b", "--device", "h100-80gb", "--gpus", "5", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "cannot be split evenly over 5 GPUs" in err and err.count("\n") == 1


def test_vllm_budget_is_gpu_memory_utilization_and_hybrid_pages_align():
    c = Costs("qwen3.5-27b", budget("h100-80gb"), engine="vllm")
    assert c.limit == -(-80 * 2**30 * 9 // 10)
    v, cfg = VLLM(), c.cfg
    bs = v.attention_block_size(cfg, c.k, c.v)
    per_token = 4 * 256 * 2 * 2  # 4 KV heads x head_dim 256 x (K+V) x f16
    assert bs % 16 == 0 and bs * per_token >= v.mamba_page_bytes(cfg) > (bs - 16) * per_token
    # one request: ceil(context / block) attention blocks + one state block per GDN group
    n = c.need(10_000)
    assert n.kv_bytes == -(-10_000 // bs) * bs * per_token * 16
    assert n.state_bytes == 3 * bs * per_token * 16  # 48 GDN layers = 3 groups of 16, pages padded


def test_users_answers_how_many_sequences_fit(capsys):
    d = _json(["fit", "qwen3.5-9b", "--device", "rtx-4090", "--users", "4", "--context", "64k"], capsys)
    assert d["fits"] and d["users"] == 4 and d["max_users"] >= 4
    costs = Costs("qwen3.5-9b", budget("rtx-4090"))
    assert costs.fits(65536, d["max_users"]) and not costs.fits(65536, d["max_users"] + 1)


def test_fitting_devices_lists_the_smallest_of_each_class():
    p = plan("qwen3.5-9b", "Q1_0", kv="turbo3", context=32768)
    names = fitting_devices(p)
    from lowbit.devices import catalog, usable

    smallest = {}
    for d in sorted(catalog(), key=lambda d: usable(d)[0]):
        if usable(d)[0] >= p.total_bytes - (0 if d.kind != "gpu" else _embd(p)):
            smallest.setdefault(d.klass, d.name)
    assert sorted(names) == sorted(smallest.values()) and len(names) == 5
    assert [usable(next(d for d in catalog() if d.name == n))[0] for n in names] == sorted(
        usable(next(d for d in catalog() if d.name == n))[0] for n in names)
    assert "phone-8gb" in names and "rtx-3060" in names
    assert fitting_devices(10**15) == []
    big = fitting_devices(plan("qwen3.5-397b-a17b", context=32768))
    assert "phone-8gb" not in big and all(n.startswith(("m3-ultra", "cpu-", "b200", "mi300x", "h200")) for n in big)


@pytest.mark.parametrize("argv, needle", [
    (["fit", "qwen3.5-27b", "--device", "rtx-4090", "--engine", "tgi"], "unknown engine"),
    (["fit", "qwen3.5-27b", "--device", "m4-16gb", "--engine", "vllm"], "for GPUs"),
    (["fit", "--family", "llama9", "--device", "rtx-4090"], "unknown family"),
    (["fit", "--device", "rtx-4090"], "name a MODEL"),
    (["fit", "qwen3.5-27b", "--device", "rtx-4090", "--weights", "Q9_K"], "unknown weight format"),
    (["fit", "qwen3.5-27b", "--device", "rtx-4090", "--kv", "q3_z"], "unknown KV-cache format"),
    (["fit", "qwen3.5-27b", "--device", "rtx-4090", "--weights", "stored"], "checkpoint folder"),
])
def test_bad_fit_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_hf_offline_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fit", "--hf", "Qwen/Qwen3.5-27B", "--device", "rtx-4090"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: offline") and err.count("\n") == 1
    assert main(["fit", "--hf", "not a repo", "--device", "rtx-4090"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err


def test_table_output_runs(capsys):
    assert main(["fit", "qwen3.5-35b-a3b", "--device", "rtx-4090", "--context", "256k"]) == 0
    out = capsys.readouterr().out
    assert "qwen3.5-35b-a3b" in out and "Assumptions" in out


# ---------------------------------------------------------------------------------------------
# Real GGUF files: KV bytes per token from their own metadata keys
# ---------------------------------------------------------------------------------------------


def _real(name):
    from lowbit.errors import LowbitError
    from lowbit.models.local import model_path

    try:
        return model_path(name)
    except LowbitError as e:
        pytest.skip(str(e))


@lru_cache(maxsize=None)
def _meta(path):
    """The attention facts straight from the file's metadata keys (not through ModelConfig)."""
    from lowbit.models.gguf_header import read_header

    meta = read_header(path).metadata
    arch = meta["general.architecture"]

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    return {
        "layers": get("block_count"), "kv_heads": get("attention.head_count_kv", heads),
        "k": get("attention.key_length", get("embedding_length") // heads),
        "v": get("attention.value_length", get("embedding_length") // heads),
        "window": get("attention.sliding_window", 0),
    }


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_kv_bytes_per_token_from_metadata_equal_the_simulators(name):
    path = _real(name)
    m = _meta(path)
    per_token_layer = m["kv_heads"] * (m["k"] + m["v"]) * 2  # f16 K and V
    # past the trained maximum on purpose: the arithmetic, not the policy, is under test
    p1, p2 = (plan(str(path), "Q4_K_M", context=c, force_context=True) for c in (65_536, 131_072))
    full_layers = m["layers"] if not m["window"] else m["layers"] // 6  # llama.cpp: gemma3 globals every 6th layer
    # growth per token comes only from full-attention layers; sliding layers are charged by the window
    assert (p2.kv_bytes - p1.kv_bytes) == 65_536 * full_layers * per_token_layer
    swa_layers = m["layers"] - full_layers
    swa_cells = -(-(m["window"] + 512) // 256) * 256 if m["window"] else 0
    assert p1.kv_bytes == (65_536 * full_layers + swa_cells * swa_layers) * per_token_layer


def test_gemma3_fit_charges_the_window_not_the_context():
    path = _real("gemma3-270m")
    m = _meta(path)
    per_token_layer = m["kv_heads"] * (m["k"] + m["v"]) * 2
    probe = Costs(str(path), budget(memory="2GiB"))
    # past one micro-batch of context llama.cpp's buffers stop growing (the output head outweighs the KQ masks)
    fixed = probe.need(4096).device_bytes - probe.need(4096).kv_bytes
    assert fixed == probe.need(65536).device_bytes - probe.need(65536).kv_bytes
    b = budget(memory=f"{fixed + 60 * 2**20}B")  # 60 MiB left for the KV cache
    c = Costs(str(path), b)
    mc = c.max_context()
    assert mc is not None and mc < c.context_cap() and c.fits(mc) and not c.fits(mc + 1)
    # llama.cpp: 15 sliding layers hold pad(window + 512) cells, the 3 global layers hold the context
    swa = 15 * (-(-(m["window"] + 512) // 256) * 256) * per_token_layer
    assert mc == (60 * 2**20 - swa) // (3 * per_token_layer) // 256 * 256
    # charging every layer by the context (what window-blind calculators do) would allow 4x less
    naive = 60 * 2**20 // (m["layers"] * per_token_layer)
    assert mc > 4 * naive


def test_qwen35_27b_on_a_4090_matches_a_hand_count():
    """docs/fit.md's 124,928: (23 GiB - weights on the GPU - state - runtime) / 64 KiB per token, in 256s."""
    p = plan("qwen3.5-27b", context=4096)  # llama.cpp's buffers are the same at any context past 512 here
    assert p.runtime_bytes == plan("qwen3.5-27b", context=131_072).runtime_bytes
    per_token = 16 * 4 * 256 * 2 * 2  # 16 full-attention layers x 4 KV heads x head_dim 256 x (K, V) x f16
    left = 23 * 2**30 - (p.weights_bytes - _embd(p)) - p.state_bytes - p.runtime_bytes
    r = fit("qwen3.5-27b", budget("rtx-4090"))
    assert r.max_context == left // per_token // 256 * 256 == 124_928
