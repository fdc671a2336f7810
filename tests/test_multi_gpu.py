"""Several GPUs: fit's share of each GPU, the measured GPU profile, and QuantizedKVCache under a layer split
and under transformers' tensor parallelism (two gloo processes on the CPU, benchmarks/real_size_multi.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from lowbit import devices
from lowbit.cli import main
from lowbit.devices import budget
from lowbit.errors import LowbitError
from lowbit.formats.kv import kv_format
from lowbit.models.catalog import resolve
from lowbit.models.config import FULL, LINEAR
from lowbit.planning.engines import LlamaCpp, shard_config
from lowbit.planning.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "real_size_multi.py"


# --- fit: what each GPU holds --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["qwen3.5-27b", "qwen3.5-35b-a3b"])
@pytest.mark.parametrize("gpus", [2, 4])
def test_layer_split_shares_add_up_and_follow_the_layers(model, gpus):
    cfg = resolve(model).config
    r = fit(model, budget("h200", gpus=gpus), "BF16", "turbo3", "turbo3", 32768)
    shares = r.need.per_gpu
    assert len(shares) == gpus
    assert sum(g.kv_bytes for g in shares) == r.need.kv_bytes > 0
    assert sum(g.state_bytes for g in shares) == r.need.state_bytes > 0
    assert max(g.total_bytes for g in shares) == r.need.device_bytes
    # layer i goes to GPU i * gpus // layers, each with its own K/V or state
    turbo3 = kv_format("turbo3")
    per_layer = LlamaCpp().layer_cache_bytes(cfg, turbo3, turbo3, 32768, 1)
    for d, g in enumerate(shares):
        mine = [i for i in range(cfg.num_layers) if min(gpus - 1, i * gpus // cfg.num_layers) == d]
        assert g.kv_bytes == sum(per_layer[i] for i in mine if cfg.layer_types[i] == FULL)
        assert g.state_bytes == sum(per_layer[i] for i in mine if cfg.layer_types[i] == LINEAR)
    data = r.to_json()["per_gpu"]
    assert [e["gpu"] for e in data] == list(range(gpus)) and data[0]["kv_bytes"] == shares[0].kv_bytes


def test_tensor_parallel_share_is_one_rank_of_the_sharded_config():
    cfg = resolve("qwen3.5-27b").config
    two = fit("qwen3.5-27b", budget("h200", gpus=2), "BF16", "turbo3", "turbo3", 32768, engine="vllm")
    one = fit("qwen3.5-27b", budget("h200", gpus=1), "BF16", "turbo3", "turbo3", 32768, engine="vllm")
    assert len(two.need.per_gpu) == 2 and two.need.per_gpu[0] == two.need.per_gpu[1]
    assert one.need.per_gpu == () and one.to_json()["per_gpu"] == []
    assert shard_config(cfg, 2).num_kv_heads[3] == cfg.num_kv_heads[3] // 2
    # half the KV heads per rank; vLLM's pages round each rank up, never below half the one-GPU cache
    assert one.need.kv_bytes / 2 <= two.need.per_gpu[0].kv_bytes < one.need.kv_bytes
    # 8 GPUs, 4 KV heads: vLLM replicates them, so a rank holds one whole head per layer, not half a head
    eight = fit("qwen3.5-27b", budget("h200", gpus=8), "BF16", "turbo3", "turbo3", 32768, engine="vllm")
    head = cfg.count(FULL) * 32768 * 2 * kv_format("turbo3").vector_bytes(cfg.head_dim)
    assert cfg.num_kv_heads[3] == 4 and head <= eight.need.per_gpu[0].kv_bytes < 2 * head


def test_fit_prints_each_gpu(capsys):
    assert main(["fit", "qwen3.5-27b", "--device", "h200", "--gpus", "2", "--weights", "BF16", "--kv", "turbo3"]) == 0
    out = capsys.readouterr().out
    assert "per GPU qwen3.5-27b" in out and "#0 " in out and "#1 " in out
    assert main(["fit", "qwen3.5-27b", "--device", "h200", "--weights", "BF16"]) == 0
    assert "per GPU qwen3.5-27b" not in capsys.readouterr().out


# --- the GPU part of `lowbit devices --measure` ------------------------------------------------------------------


def test_no_cuda_no_gpu_figures_and_no_torch_import(monkeypatch):
    monkeypatch.setattr(devices, "_cuda_present", lambda: False)
    assert devices.measure_cuda(quick=True) == []


def test_measured_gpus_are_stored_and_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    gpu = {"index": 0, "name": "Fake GPU", "memory_bytes": 1 << 30, "multiprocessors": 1,
           "copy_bandwidth_bytes_s": 4.3e12, "read_bandwidth_bytes_s": 3.9e12, "bf16_matmul_flops": 7.8e14}
    cpu = {"read_bandwidth_bytes_s": 2e10, "copy_bandwidth_bytes_s": 3e10, "flops": 1e11, "array_bytes": 1, "matrix": 1,
           "passes": 1, "numpy": "x"}
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: type(
        "R", (), {"returncode": 0, "stdout": json.dumps(cpu) + "\n", "stderr": ""})())
    monkeypatch.setattr(devices, "measure_cuda", lambda quick=False: [gpu])
    assert main(["devices", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0 (Fake GPU) copy bandwidth" in out and "4.30 TB/s" in out and "780 TFLOP/s" in out
    assert devices.load_profile()["gpus"] == [gpu]


# --- QuantizedKVCache on several devices --------------------------------------------------------------------


def _multi():
    spec = importlib.util.spec_from_file_location("real_size_multi", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))
    spec.loader.exec_module(mod)
    return mod


def test_each_layer_keeps_its_stores_on_the_device_of_its_tensors():
    """A layer split hands each layer K/V on that layer's device: its stores and codecs live there (the meta
    device stands in for a second GPU), and the per-device accounting follows them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3_5TextConfig"):
        pytest.skip("this transformers has no Qwen3.5")
    from lowbit.cache import QuantizedKVCache

    multi = _multi()
    cfg = transformers.Qwen3_5TextConfig(hidden_size=64, num_hidden_layers=8, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=128, linear_num_value_heads=4,
                                         linear_num_key_heads=2, linear_key_head_dim=32, linear_value_head_dim=32,
                                         vocab_size=64, intermediate_size=64,
                                         layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"]
                                         * 3 + ["full_attention"])
    cache = QuantizedKVCache(cfg, "turbo3", "q8_0")
    for layer, dev in ((3, "cpu"), (7, "meta")):
        k = torch.randn(1, 2, 5, 128, device=dev)
        cache.update(k, k.clone(), layer)
        lay = cache.layers[layer]
        assert lay.k_store.packed.device.type == dev and lay.v_store.packed.device.type == dev
        assert all(t.device.type == dev for t in vars(lay.k_store.codec).values() if isinstance(t, torch.Tensor))
    held = multi.held_by_device(cache)
    assert held["cpu"]["layers"][-1] == 3 and held["meta"]["layers"] == [7]
    per_vec = 2 * 5 * (cache.plan[3][0].fmt.vector_bytes(128) + cache.plan[3][1].fmt.vector_bytes(128))
    assert held["cpu"]["kv_live"] == held["meta"]["kv_live"] == per_vec


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=subprocess_env(),
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The one-process reference (and the layer split where accelerate is installed), then tensor parallel over
    two gloo processes, tiny Qwen3.5 with 2 KV heads, bf16 / turbo3 / q8_0+turbo4 caches."""
    pytest.importorskip("transformers")
    from conftest import skip_unless_qwen35_on_cpu

    skip_unless_qwen35_on_cpu()
    d = tmp_path_factory.mktemp("multi")
    runs = ["bf16@200", "turbo3/turbo3@256", "q8_0/turbo4@384"]  # whole chunks: every decode step fused
    res = _run(str(SCRIPT), "layers", "--tiny", "--device", "cpu", "--runs", *runs, "--out", str(d / "layers.json"),
               "--reference", str(d / "ref.pt"))
    assert res.returncode == 0, res.stderr[-3000:]
    res = _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT), "tp", "--tiny",
               "--device", "cpu", "--runs", *runs, "--out", str(d / "tp.json"), "--reference", str(d / "ref.pt"))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((d / "layers.json").read_text()), json.loads((d / "tp.json").read_text())


def test_tensor_parallel_decodes_the_one_gpu_tokens_from_its_local_heads(two_ranks):
    layers, tp = two_ranks
    single = {(r["kv"], r["context"]): r for r in layers["single"]}
    assert tp["model"]["world_size"] == 2 and tp["settings"]["tiny"]
    assert tp["model"]["tp_plan"]["model.layers.*.self_attn.k_proj"] == "colwise"
    n = tp["settings"]["decode_tokens"]
    for run in tp["tp"]:
        ref = single[(run["kv"], run["context"])]
        assert run["ranks_agree"] and len(run["per_rank"]) == 2
        assert run["vs_single"]["tokens_equal"] and run["decode"]["tokens"] == ref["decode"]["tokens"]
        assert run["vs_single"]["first_step_logits_max_rel_diff"] < 2.0 ** -5  # bf16 sums in another order
        whole = next(iter(ref["held_after_prefill"].values()))
        for rank in run["per_rank"]:
            held = next(iter(rank["held_after_prefill"].values()))
            assert held["kv_live"] * 2 == whole["kv_live"]  # each rank its half of the KV heads
            assert held["state"] == whole["state"]  # transformers' plan runs the whole Gated DeltaNet on every rank
            assert held["kv_live"] == run["predicted_transformers_rule"]["rank"]["kv_bytes"]
        assert run["explained_vs_fit"]["kv_residual"] == 0
        assert run["explained_vs_fit"]["state_residual_vs_transformers_rule"] == 0
        if run["kv"] != "bf16":
            f = run["fused"]
            assert f["dense_fallbacks"] == 0 and f["fused_steps"] == n * f["attention_layers"]


def test_layer_split_decodes_bit_for_bit_the_one_gpu_run(two_ranks):
    layers, _ = two_ranks
    if "skipped" in layers["layers_split"]:
        pytest.skip(layers["layers_split"]["skipped"])
    single = {(r["kv"], r["context"]): r for r in layers["single"]}
    for run in layers["layers"]:
        assert run["decode"]["tokens"] == single[(run["kv"], run["context"])]["decode"]["tokens"]
        assert run["vs_single"]["first_step_logits_max_rel_diff"] == 0.0
        held = run["held_after_prefill"]
        assert sum(h["kv_live"] for h in held.values()) == sum(
            p["kv_bytes"] for p in run["predicted_transformers_rule"].values())


# --- the speed model's eager-transformers row ------------------------------------------------------------------


def test_transformers_row_is_bytes_plus_layers_plus_step():
    from lowbit.planning import speed
    from lowbit.planning.planner import plan

    eff = speed.efficiency("transformers", "gpu")
    assert eff.layer_seconds_decode > 0 and eff.step_seconds_decode > 0 and "measured" in eff.source
    p = plan("qwen3.5-27b", weights="BF16", kv_k="turbo3", kv_v="turbo3", context=32768)
    s = speed.estimate(p, "h200", runtime="transformers")
    dev = devices.device("h200")
    items = speed.decode_work(p)
    by_hand = sum(max(i.bytes / (dev.bandwidth_bytes_s * eff.bw(i.type)[0]),
                      i.flops / (dev.flops * eff.compute(i.type, "decode")[0]) if i.what == "weights" else
                      i.flops / (dev.flops * eff.attention(i.type, "decode")[0]) if i.what == "attention" else 0.0)
                  for i in items)
    by_hand += p.config.num_layers * eff.layer_seconds_decode + eff.step_seconds_decode
    assert s.decode_tps == pytest.approx(1 / by_hand, rel=1e-9)
    assert s.engine == "transformers" and s.decode_bound == "per-layer overhead"
    # tensor parallel reads half the bytes per GPU; the fixed costs stay (their communication is not modelled)
    tp = speed.estimate(p, "h200", gpus=2, runtime="transformers", split="tensor")
    lay = speed.estimate(p, "h200", gpus=2, runtime="transformers", split="layers")
    assert tp.decode_bytes == pytest.approx(s.decode_bytes / 2) and tp.decode_tps > s.decode_tps
    assert lay.decode_tps == pytest.approx(s.decode_tps)
    # the llama.cpp row has no per-step cost: the runtime, not the plan's engine, picks the row
    assert speed.estimate(p, "h200").decode_tps > 2 * s.decode_tps
    with pytest.raises(LowbitError):
        speed.estimate(p, "h200", split="pipeline")
