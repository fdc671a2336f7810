"""benchmarks/decode_e2e.py at toy size on the CPU: every cache decodes, the fused steps are counted, the fused and
dense runs over the same packed bytes agree, and the cache holds exactly the bytes lowbit's rule predicts (the same
script times the 27B and the 8B on an H200)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "decode_e2e.py"
KVS = ["bf16", "turbo3/turbo3", "q8_0/turbo4"]
NEW = 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "tiny.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--batches", "1", "2",
                          "--new-tokens", str(NEW), "--warmup-steps", "2", "--check", "--check-tokens", "3", "--dtype", "float32",
                          "--profile", "1",
                          "--kv", *KVS, "--out", str(out)], capture_output=True, text=True, env=subprocess_env(),
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout


def test_every_cache_decodes_greedily(tiny):
    result, stdout = tiny
    assert [(r["batch"], r["kv"]) for r in result["runs"]] == [(b, kv) for b in (1, 2) for kv in KVS]
    layers = 2  # llama-tiny
    for r in result["runs"]:
        assert len(r["eager"]["tokens"]) == r["batch"] and all(len(t) == NEW for t in r["eager"]["tokens"])
        assert r["graph"] == {"error": "no CUDA device"}
        if r["kv"] == "bf16":
            assert r["fused"] is None
        else:  # every decode step of every layer read the packed cache
            assert r["fused"]["fused_steps"] == NEW * layers and r["fused"]["dense_fallbacks"] == 0
    assert "x bf16" in stdout and stdout.count("llama-tiny |") == len(result["runs"])


def test_the_profile_splits_a_step_by_kernel_group(tiny):
    result, stdout = tiny
    for r in result["runs"]:
        prof = r["profile"]
        assert prof["us_per_step"] > 0 and prof["top"]
        assert sum(prof["groups_us"].values()) == pytest.approx(prof["us_per_step"], abs=0.1 * len(prof["groups_us"]))
        assert prof["groups_us"].get("matmul (weights)", 0) > 0
        # the bf16 baseline attends with SDPA; the packed caches never do (their decode reads the packed bytes)
        assert (prof["groups_us"].get("SDPA (bf16 baseline)", 0) > 0) == (r["kv"] == "bf16")
    assert stdout.count("profile llama-tiny ") == len(result["runs"])  # and the terminal shows each


def test_the_cache_holds_the_predicted_bytes(tiny):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import decode_e2e
        import real_size
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from lowbit.models.config import from_hf_config

    result, _ = tiny
    cfg = from_hf_config(decode_e2e.TINY_LLAMA, name="llama-tiny")
    for r in result["runs"]:
        # float32 model (see the fixture): the model-dtype ("bf16") cache holds float32 K/V
        want = real_size.transformers_rule(cfg, r["kv"].replace("bf16", "f32/f32"), r["context"] + NEW, r["batch"], 4)
        assert r["cache_bytes"] == want["kv_bytes"] > 0


def test_fused_and_dense_decode_agree(tiny):
    result, _ = tiny
    assert [c["kv"] for c in result["checks"]] == KVS[1:]
    for c in result["checks"]:
        assert c["tokens_equal"] and c["tokens_compared"] == 3
        # float32 on both paths: only summation order differs (in bf16 the paths differ by bf16's rounding, and a
        # random toy model's near-tied logits can then pick different greedy tokens)
        assert c["first_step_logits_max_rel_diff"] < 1e-4
        for path in ("fused", "dense"):  # and each agrees with float32 attention over the same packed bytes
            ref = c["vs_float32_attention"][path]
            assert ref["tokens_equal"] and ref["first_step_logits_max_rel_diff"] < 1e-4


def test_summary_speedups_are_against_the_same_runs_bf16(tiny):
    result, _ = tiny
    by = {(s["batch"], s["kv"]): s for s in result["summary"]}
    runs = {(r["batch"], r["kv"]): r for r in result["runs"]}
    for (b, kv), s in by.items():
        base = runs[(b, "bf16")]["eager"]["ms_per_token_median"]
        assert s["eager_speedup"] == round(base / runs[(b, kv)]["eager"]["ms_per_token_median"], 3)
