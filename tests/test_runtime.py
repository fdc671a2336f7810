"""Runtime buffers as llama.cpp allocates them: the output and compute buffers for any context, -b/-ub and
sequence count (flash attention, CPU backend), against what llama.cpp itself logged."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.formats.kv import kv_format
from lowbit.models.catalog import resolve
from lowbit.planning.engines import LlamaCpp
from lowbit.planning.planner import plan

MIB = 1 << 20

# llama.cpp 0c1e57098 (CPU, flash attention on, --swa-full off), as logged by
# `python benchmarks/llamacpp_buffers.py` (its probe creates one context and exits): per sequence context,
# sequences, -b, -ub -> compute buffer in MiB to 4 decimals (the destructor's line), KV buffer in MiB.
MEASURED = {
    "smollm2-135m": [
        (1, 1, 2048, 512, 0.1919, 5.62), (64, 1, 2048, 512, 12.2815, 5.62), (512, 1, 2048, 512, 98.2520, 11.25),
        (131072, 1, 2048, 512, 141.5137, 2880.0), (131072, 1, 2048, 2048, 566.0547, 2880.0),
        (131072, 1, 512, 128, 35.3784, 2880.0), (131072, 1, 8, 1, 0.2765, 2880.0), (1024, 1, 2048, 2048, 196.5039, 22.5),
        (1, 4, 2048, 512, 0.7676, 22.5), (64, 2, 2048, 512, 24.5630, 11.25), (32768, 2, 64, 32, 6.1407, 1440.0),
        (32768, 4, 8, 1, 0.7676, 2880.0),
    ],
    "gemma3-270m": [
        (1, 1, 2048, 512, 1.0049, 4.5), (512, 1, 2048, 512, 514.5020, 9.0), (4096, 1, 512, 128, 128.6255, 23.25),
        (131072, 1, 2048, 512, 514.5020, 399.0), (524288, 1, 2048, 512, 530.7715, 1551.0),
        (1048576, 1, 2048, 128, 260.6304, 3083.25),
    ],
}


@pytest.fixture(params=sorted(MEASURED))
def model(request, smollm2_gguf, gemma3_gguf):
    path = {"smollm2-135m": smollm2_gguf, "gemma3-270m": gemma3_gguf}[request.param]
    return request.param, resolve(str(path)).config


def test_compute_output_and_kv_buffers_within_2_percent_of_llama_cpp(model):
    name, cfg = model
    f16 = kv_format("f16")
    for context, seqs, b, ub, compute_mib, kv_mib in MEASURED[name]:
        engine = LlamaCpp(n_batch=b, n_ubatch=ub)
        parts = engine.runtime_parts(cfg, context, seqs)
        measured = compute_mib * MIB
        assert abs(parts["compute"] - measured) / measured < 0.02, (context, seqs, b, ub)
        assert abs(parts["compute"] - measured) < 0.002 * measured + 0.0001 * MIB  # in fact within 0.2%
        assert parts["output"] == cfg.vocab_size * seqs * 4  # llama.cpp logs it to 0.01 MiB: exact by its rule
        assert abs(engine.allocate(cfg, f16, f16, context, seqs).kv_bytes - kv_mib * MIB) <= 0.005 * MIB


def test_the_micro_batch_follows_b_ub_and_the_context():
    e = LlamaCpp(n_batch=2048, n_ubatch=512)
    assert e.ubatch(1) == 1 and e.ubatch(300) == 300 and e.ubatch(4096) == 512
    assert LlamaCpp(n_batch=64, n_ubatch=512).ubatch(4096) == 64  # -ub is at most -b
    assert e.ubatch(100, sequences=4) == 400  # n_ctx is every sequence's cells together
    with pytest.raises(LowbitError, match="n_ubatch"):
        LlamaCpp(n_ubatch=0)


def test_a_one_token_context_no_longer_pays_for_a_512_token_graph():
    tiny, full = plan("qwen3.5-27b", context=1), plan("qwen3.5-27b", context=4096)
    assert full.runtime_bytes > 200 * tiny.runtime_bytes
    # the output head dominates Qwen3.5-27B: past one micro-batch the buffers stop growing
    assert full.runtime_bytes == plan("qwen3.5-27b", context=131_072).runtime_bytes
    bigger = plan("qwen3.5-27b", context=4096, engine=LlamaCpp(n_ubatch=2048))
    assert 3.9 < (bigger.runtime_bytes - bigger.config.vocab_size * 4) / (full.runtime_bytes - full.config.vocab_size * 4) < 4.1


def test_long_contexts_are_charged_the_kq_mask(model):
    """Past the output head, the f16 mask (cells x micro-batch) grows with the context, byte for byte."""
    name, cfg = model
    e = LlamaCpp()
    far = {"smollm2-135m": 262_144, "gemma3-270m": 1 << 21}[name]
    a, b = e.runtime_parts(cfg, far, 1), e.runtime_parts(cfg, 2 * far, 1)
    assert a["compute"] == a["block"] > a["head"]
    assert b["compute"] - a["compute"] == 2 * 512 * far  # f16, one row per micro-batch token


def test_plan_cli_takes_b_and_ub(capsys):
    assert main(["plan", "qwen3.5-0.8b", "--context", "8192", "-b", "4096", "-ub", "1024", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    e = LlamaCpp(n_batch=4096, n_ubatch=1024)
    cfg = resolve("qwen3.5-0.8b").config
    assert doc["runtime_bytes"] == e.runtime_bytes(cfg, 1, 8192)
    assert "-b 4096 -ub 1024" in doc["provenance"]["runtime_bytes"]
    assert main(["plan", "qwen3.5-0.8b", "--engine", "vllm", "-ub", "64"]) == 2
