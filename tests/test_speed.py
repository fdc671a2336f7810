"""The speed model: hand-checked arithmetic, monotonicity in bytes and bandwidth, offload paths, the
measured device profile (its round trip and one real quick measurement), and the commands that show it."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from importlib import resources

import pytest

from lowbit import devices
from lowbit.cli import main
from lowbit.devices import Device, device
from lowbit.errors import LowbitError
from lowbit.models.tensors import EMBED, EXPERTS
from lowbit.planning import speed
from lowbit.planning.fit import fit
from lowbit.planning.planner import plan
from lowbit.planning.speed import Efficiency, Item, decode_work, estimate, on_device, prefill_work

GPU = Device("test-gpu", "gpu", "consumer-gpu", "a test GPU", 24 << 30, bandwidth_bytes_s=1e12, flops=1e14)


def eff(bw=0.5, rate=0.1, attn=0.1, layer=0.0) -> Efficiency:
    return Efficiency("gpu", {"default": bw}, {"default": rate}, {"default": rate}, {"default": attn},
                      {"default": attn}, layer, layer, {}, "test")


# --- hand-checked arithmetic ----------------------------------------------------------------------


def test_roofline_of_one_item_by_hand():
    notes: set[str] = set()
    # 1 GB at 0.5 x 1 TB/s = 2 ms; 2 GFLOP at 0.1 x 100 TFLOP/s = 0.2 ms: memory bound, 2 ms
    part = speed._time([Item("weights", "Q4_0", 1e9, 2e9)], GPU, eff(), "decode", 0, 1, notes)
    assert part.seconds == pytest.approx(2e-3) and part.memory_seconds == pytest.approx(2e-3)
    # 2 TFLOP at 10 TFLOP/s = 0.2 s > 2 ms: compute bound
    part = speed._time([Item("weights", "Q4_0", 1e9, 2e12)], GPU, eff(), "decode", 0, 1, notes)
    assert part.seconds == pytest.approx(0.2) and part.memory_seconds == 0
    # two items add (one after the other), and the per-layer cost is layers x seconds
    part = speed._time([Item("weights", "Q4_0", 1e9, 0), Item("state", "f32", 5e8, 0)], GPU, eff(layer=1e-4),
                       "decode", 30, 1, notes)
    assert part.seconds == pytest.approx(2e-3 + 1e-3 + 30 * 1e-4)


def test_decode_bytes_of_a_dense_model_by_hand():
    p = plan("llama-3.1-8b", "Q4_K_M", kv="f16", context=1000)
    items = decode_work(p)
    weights = sum(i.bytes for i in items if i.what in ("weights", "other"))
    emb = next(t for t in p.tensors if t.name == "token_embd.weight")
    # untied: every tensor once, the embedding table only its one row
    expect = sum(t.bytes for t in p.tensors) - emb.bytes + emb.bytes / p.config.vocab_size
    assert weights == pytest.approx(expect)
    # KV at 1,000 tokens: 1,024 cells (padded to 256) x 32 layers x 8 KV heads x 128 x 2 bytes x (K + V)
    kv = sum(i.bytes for i in items if i.what == "attention")
    assert kv == 1024 * 32 * 8 * 128 * 2 * 2
    # decode FLOPs of the matrices: 2 per parameter a token touches (the embedding table: none; norms are
    # elementwise work)
    flops = sum(i.flops for i in items if i.what == "weights")
    norms = sum(math.prod(t.shape) for t in p.tensors if len(t.shape) == 1)
    assert norms > 0 and flops == 2 * (p.params_total - math.prod(emb.shape) - norms)


def test_decode_tokens_per_second_by_hand():
    p = plan("llama-3.1-8b", "Q4_K_M", kv="f16", context=1000)
    total = sum(i.bytes for i in decode_work(p))
    s = estimate(p, GPU)
    # every item is memory bound here (about 2 FLOP per byte against 20 at this device's ratio)
    e = speed.efficiency("llama.cpp", "gpu")
    assert s.decode_bound == "memory"
    # Q4_K_M's types (Q4_K, Q6_K) have no GPU figure of their own, so the matrices read at the default
    # efficiency, as the KV cache and the norms (elementwise work) always do
    assert {e.bw(i.type)[0] for i in decode_work(p) if i.what == "weights"} == {e.bw("default")[0]}
    assert 1 / s.decode_tps == pytest.approx(total / (GPU.bandwidth_bytes_s * e.bw("default")[0]))


def test_moe_experts_count_as_the_router_selects_them():
    p = plan("qwen3.5-35b-a3b", "Q4_K_M", kv="f16", context=4096)
    cfg = p.config
    experts = sum(t.bytes for t in p.tensors if t.kind == EXPERTS)
    one = sum(i.bytes for i in decode_work(p, sequences=1) if i.expert)
    assert one == pytest.approx(experts * cfg.num_experts_used / cfg.num_experts)
    many = sum(i.bytes for i in decode_work(p, sequences=64) if i.expert)
    assert many == pytest.approx(experts * (1 - (1 - cfg.num_experts_used / cfg.num_experts) ** 64))
    assert one < many < experts


def test_tied_output_reads_the_whole_table_and_prefill_computes_one_row_of_logits(smollm2_gguf):
    p = plan(str(smollm2_gguf), context=512)
    emb = next(t for t in p.tensors if t.kind == EMBED)
    dec = [i for i in decode_work(p) if i.what == "weights" and i.layer == -1]
    assert sum(i.bytes for i in dec) == emb.bytes  # SmolLM2 ties its output to token_embd
    pre = [i for i in prefill_work(p, 128) if i.what == "weights" and i.layer == -1]
    assert sum(i.flops for i in pre) == 2 * math.prod(emb.shape)  # the last token's logits only


def test_prefill_attention_is_causal_by_hand():
    p = plan("llama-3.1-8b", "Q4_K_M", kv="f16", context=4096)
    cfg = p.config
    n, d = 128, 1000
    att = sum(i.flops for i in prefill_work(p, n, d) if i.what == "attention")
    assert att == 4 * cfg.num_heads * cfg.head_dim * (n * d + n * (n + 1) / 2) * cfg.num_layers


# --- monotonic in bytes and bandwidth ---------------------------------------------------------------


def test_decode_is_faster_with_fewer_bytes_and_more_bandwidth():
    rates = [estimate(plan("qwen3.5-9b", w, kv="f16", context=8192), "h100-80gb").decode_tps
             for w in ("F16", "Q8_0", "Q4_K_M", "Q2_K")]
    assert rates == sorted(rates)
    p = plan("qwen3.5-9b", "Q4_K_M", kv="f16", context=8192)
    by_bw = [estimate(p, replace(GPU, bandwidth_bytes_s=bw)).decode_tps for bw in (1e11, 3e11, 1e12, 3e12)]
    assert by_bw == sorted(by_bw) and by_bw[0] < by_bw[-1]
    by_ctx = [estimate(p, GPU, context=c).decode_tps for c in (1024, 32768, 131072)]
    assert by_ctx == sorted(by_ctx, reverse=True)
    # a smaller KV format reads fewer bytes at long context
    small = estimate(plan("qwen3.5-9b", "Q4_K_M", kv="q4_0", context=131072), GPU).decode_tps
    assert small > by_ctx[-1]


def test_compute_bound_devices_do_not_speed_up_with_bandwidth():
    p = plan("qwen3.5-9b", "Q4_K_M", kv="f16", context=4096)
    slow_math = replace(GPU, flops=1e10)
    a, b = (estimate(p, replace(slow_math, bandwidth_bytes_s=bw)) for bw in (1e12, 1e13))
    assert a.decode_bound == "compute" and a.decode_tps == pytest.approx(b.decode_tps, rel=1e-3)


# --- offload ----------------------------------------------------------------------------------------


def test_offloaded_layers_run_on_the_host_one_after_the_other():
    p = plan("qwen3.5-27b", "Q4_K_M", kv="f16", context=4096)
    n = p.config.num_layers
    alone = estimate(p, "rtx-4090")
    host = device("cpu-64gb")
    steps = []
    for on_cpu in (0, n // 4, n // 2, n):
        off = {"layers_on_cpu": on_cpu, "gpu_layers": n - on_cpu, "expert_layers_on_cpu": 0}
        s = estimate(p, "rtx-4090", offload=off, host=host)
        assert s.decode_parts[0].seconds + (s.decode_parts[1].seconds if len(s.decode_parts) > 1 else 0) \
            == pytest.approx(1 / s.decode_tps)
        steps.append(s)
    assert steps[0].decode_tps == pytest.approx(alone.decode_tps)
    rates = [s.decode_tps for s in steps]
    assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0] / 2
    # everything on the host decodes about as fast as the host alone (the GPU keeps only row lookups)
    assert steps[-1].decode_tps == pytest.approx(estimate(p, host).decode_tps, rel=0.02)
    # a prompt's offloaded weights cross the host link per micro-batch
    assert [s.prefill_tps for s in steps] == sorted((s.prefill_tps for s in steps), reverse=True)
    assert "host part" in steps[-1].decode_bound


def test_expert_offload_moves_only_the_experts():
    p = plan("qwen3.5-122b-a10b", "Q4_K_M", kv="f16", context=4096)
    n = p.config.num_layers
    off = {"layers_on_cpu": 0, "gpu_layers": n, "expert_layers_on_cpu": 10}
    s = estimate(p, "rtx-4090", offload=off)
    host_bytes = s.decode_parts[1].bytes
    expect = sum(i.bytes for i in decode_work(p) if i.expert and 0 <= i.layer < 10)
    assert host_bytes == pytest.approx(expect)


def test_fit_carries_the_speed_of_its_placement():
    r = fit("qwen3.5-122b-a10b", "rtx-4090", context=8192)
    assert not r.fits and r.offload["expert_layers_on_cpu"] > 0
    assert r.speed is not None and len(r.speed.decode_parts) == 2 and r.speed.placement == r.offload["llama_args"]
    whole = fit("qwen3.5-122b-a10b", "h200-141gb", context=8192)
    assert whole.fits and len(whole.speed.decode_parts) == 1 and whole.speed.decode_tps > r.speed.decode_tps
    assert fit("qwen3.5-9b", devices.budget(memory="24GB")).speed is None  # a bare size has no speed figures


def test_on_device_flags_a_plan_that_does_not_fit_unified_memory():
    s = on_device(plan("qwen3.5-397b-a17b", "Q4_K_M", kv="f16", context=4096), "m4-max-128gb")
    assert not s.fits and s.placement == "does not fit"
    assert on_device(plan("qwen3.5-9b", "Q4_K_M", kv="f16", context=4096), "m4-max-128gb").fits


# --- data -----------------------------------------------------------------------------------------------


def test_every_device_has_speed_figures_with_a_source():
    for d in devices.catalog():
        assert d.bandwidth_bytes_s > 1e9 and d.flops > 1e11 and d.perf_source, d.name
    # a few vendor figures, by hand
    assert device("rtx-4090").bandwidth_bytes_s == 1008e9 and device("h100-80gb").bandwidth_bytes_s == 3350e9
    assert device("m4-max-128gb").bandwidth_bytes_s == 546e9


def test_efficiencies_name_where_they_were_measured():
    tab = json.loads(resources.files("lowbit.planning").joinpath(speed.EFFICIENCY_FILE).read_text())
    for kind, k in tab["engines"]["llama.cpp"]["kinds"].items():
        assert k["source"], kind
        for section in ("bandwidth", "decode", "prefill", "attention_decode", "attention_prefill"):
            assert "default" in k[section] and all(v > 0 for v in k[section].values()), (kind, section)
    cpu = tab["engines"]["llama.cpp"]["kinds"]["cpu"]
    assert "llama-bench" in cpu["source"]
    for t in ("F16", "Q8_0", "Q4_K", "Q4_0", "TQ2_0", "TQ1_0", "Q1_0"):
        assert t in cpu["decode"] and t in cpu["prefill"], t
    for kv in ("f16", "q8_0", "q4_0"):
        assert kv in cpu["attention_decode"], kv


def test_every_speed_is_labelled_an_estimate():
    s = estimate(plan("qwen3.5-9b", "Q4_K_M", kv="f16", context=4096), "rtx-4090")
    j = s.to_json()
    assert j["estimate"] is True and j["assumption"].startswith("estimate:") and "measured" in j["assumption"]
    assert j["efficiency"]["rtx-4090"]["source"]


# --- the device profile ---------------------------------------------------------------------------------

FAKE = {"read_bandwidth_bytes_s": 2.0e10, "copy_bandwidth_bytes_s": 3.0e10, "flops": 1.0e11,
        "array_bytes": 1, "matrix": 1, "passes": 1, "numpy": "x"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    return tmp_path


def test_profile_round_trip_with_the_measurement_mocked(cache, monkeypatch, capsys):
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: type(
        "R", (), {"returncode": 0, "stdout": json.dumps(FAKE) + "\n", "stderr": ""})())
    with pytest.raises(LowbitError, match="devices --measure"):
        device("this-cpu")
    assert main(["devices", "--measure", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    path = cache / devices.PROFILE_FILE
    assert out["path"] == str(path) and path.is_file()
    assert [p.name for p in cache.iterdir()] == [devices.PROFILE_FILE]  # written atomically: no temporary left
    prof = devices.load_profile()
    assert prof["read_bandwidth_bytes_s"] == 2.0e10 and prof["flops"] == 1.0e11
    d = device("this-cpu")
    n = prof["logical_cpus"]
    assert d.kind == "cpu" and d.threads == n and d.bandwidth_bytes_s == 2.0e10 * n and d.flops == 1.0e11 * n
    one = devices.this_cpu(threads=1)
    assert one.bandwidth_bytes_s == 2.0e10 and "measured on this machine" in one.perf_source
    # the profile drives a speed estimate and `fit --device this-cpu`
    s = estimate(plan("qwen3.5-0.8b", "Q4_K_M", kv="f16", context=1024), one)
    assert s.device == "this-cpu" and s.decode_tps > 0
    assert main(["fit", "qwen3.5-0.8b", "--device", "this-cpu", "--context", "1024", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["speed"]["device"] == "this-cpu"


def test_a_damaged_profile_is_one_line_and_exit_2(cache, capsys):
    (cache / devices.PROFILE_FILE).write_text("{not json")
    assert main(["fit", "qwen3.5-0.8b", "--device", "this-cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error:") and err.count("\n") == 1 and "devices --measure" in err


def test_one_real_quick_measurement():
    t0 = time.perf_counter()
    prof = devices.measure(quick=True)
    assert time.perf_counter() - t0 < 2.0
    assert 1e8 < prof["read_bandwidth_bytes_s"] < 1e13 and 1e8 < prof["copy_bandwidth_bytes_s"] < 1e13
    assert 1e8 < prof["flops"] < 1e14 and prof["logical_cpus"] >= 1


# --- the commands ------------------------------------------------------------------------------------------


def test_plan_simulate_and_fit_show_the_estimate(capsys):
    assert main(["plan", "qwen3.5-9b", "--context", "8192", "--device", "rtx-4090", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["speed"][0]["device"] == "rtx-4090" and data["speed"][0]["estimate"] is True
    assert main(["simulate", "--models", "qwen3.5-9b", "--context", "8192", "--format", "json",
                 "--speed", "rtx-4090,cpu-64gb"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    today, onebit = (r["speed"]["rtx-4090"]["decode_tokens_per_s"] for r in rows)
    assert onebit > today  # fewer bytes per token on a bandwidth-bound GPU
    assert main(["simulate", "--models", "qwen3.5-9b", "--context", "8192", "--wide"]) == 0
    assert "decode tok/s" in capsys.readouterr().out
    assert main(["simulate", "--models", "qwen3.5-9b", "--context", "8192", "--speed", "h100-80gb"]) == 0
    assert "Decode tokens/s (estimate)" in capsys.readouterr().out
    assert main(["fit", "qwen3.5-9b", "--device", "rtx-4090", "--wide"]) == 0
    assert "decode tok/s" in capsys.readouterr().out


def test_unknown_speed_device_is_one_line_and_exit_2(capsys):
    assert main(["simulate", "--models", "qwen3.5-9b", "--speed", "rtx-9999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: unknown device") and err.count("\n") == 1
