"""benchmarks/real_size.py at toy size on the CPU: the JSON a GPU run writes, with every figure checked
against lowbit's plan (the same script builds the 27B on an H200)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env, skip_unless_qwen35_on_cpu

transformers = pytest.importorskip("transformers")
skip_unless_qwen35_on_cpu()

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "real_size.py"


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=subprocess_env(),
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_size") / "tiny.json"
    res = _run("--tiny", "--device", "cpu", "--dense-check", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout


def test_tiny_run_writes_every_cache_and_the_table(tiny):
    result, stdout = tiny
    assert [r["kv"] for r in result["runs"]] == ["bf16", "turbo3/turbo3", "q8_0/turbo4"]
    assert result["machine"]["torch"] and result["machine"]["transformers"] == transformers.__version__
    model = result["models"][0]
    assert model["attention_layers"] == 1 and model["linear_layers"] == 3
    gdn = model["gdn_kernels"]
    assert gdn["fla_used"] == gdn["torch_chunk_gated_delta_rule"].startswith("fla.")
    assert "plan KV llama.cpp" in stdout and stdout.count("tiny ") == 3


def test_tiny_memory_matches_the_plan_and_its_explained_differences(tiny):
    result, _ = tiny
    for r in result["runs"]:
        a, d = r["after_prefill"], r["after_decode"]
        assert r["logits_finite"]
        # the context is whole 256-cell blocks: llama.cpp's K/V bytes are exactly what the cache holds
        assert a["held"]["kv_live"] == a["predicted"]["llama.cpp"]["kv_bytes"] > 0
        assert a["held"]["kv_live"] == a["predicted"]["transformers_rule"]["kv_bytes"]
        assert a["held"]["state"] == a["predicted"]["transformers_rule"]["state_bytes"] > 0
        assert a["held"]["state"] != a["predicted"]["llama.cpp"]["state_bytes"]
        for when in (a, d):
            assert when["explained"]["kv_residual"] == 0 and when["explained"]["state_residual"] == 0
        assert d["tokens"] == r["context"] + result["settings"]["decode_tokens"]
        assert d["held"]["kv_live"] == d["predicted"]["transformers_rule"]["kv_bytes"]
        assert d["held"]["kv_capacity"] >= d["held"]["kv_live"]


def test_tiny_decode_is_greedy_and_fused_where_asked(tiny):
    result, _ = tiny
    n = result["settings"]["decode_tokens"]
    for r in result["runs"]:
        dec = r["decode"]
        assert len(dec["tokens"]) == n and dec["timed_steps"] == n - dec["warmup_steps"]
        assert dec["ms_per_token_median"] > 0 and dec["tokens_per_s"] > 0
        if r["kv"] == "bf16":
            assert r["fused"] is None
        else:
            f = r["fused"]
            assert f["fused_steps"] == n * f["attention_layers"] and f["dense_fallbacks"] == 0
            assert f["reference_calls"] == f["fused_steps"]  # on the CPU the reference reads the packed bytes
            # the dense path over the same packed bytes: same tokens, logits within 4 bf16 steps of the largest
            check = r["dense_check"]
            assert check["tokens_equal"] and check["dense_fallbacks"] == 0
            assert check["first_step_logits_max_rel_diff"] < 4 * 2.0 ** -8


def test_bad_kv_format_fails_before_building_anything():
    res = _run("--tiny", "--device", "cpu", "--kv", "turbo9/turbo3", timeout=120)
    assert res.returncode != 0 and "turbo9" in res.stderr
