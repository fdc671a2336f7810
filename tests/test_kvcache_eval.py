"""`lowbit eval kv`: bits accounting, bad input, and a short real run on SmolLM2-135M (CPU)."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main
from lowbit.eval.kv import bits_per_value
from lowbit.formats.kv import KV_FORMATS
from lowbit.cache import layer_plan

KEYS = {"model", "kv_k", "kv_v", "bits_per_value", "tokens", "context", "ppl", "ppl_f16", "kld", "top1", "niah"}


def test_bits_per_value_comes_from_the_format_definitions():
    bpv = lambda n, d: float(KV_FORMATS[n].bits_per_value(d))  # noqa: E731
    k, v, both = bits_per_value(layer_plan(30, "q8_0", "turbo3"), 64)
    assert (k, v, both) == (bpv("q8_0", 64), bpv("turbo3", 64), (bpv("q8_0", 64) + bpv("turbo3", 64)) / 2)
    _, _, both = bits_per_value(layer_plan(30, "turbo3", boundary=2), 64)
    assert both == pytest.approx((26 * bpv("turbo3", 64) + 4 * 16) / 30)


@pytest.mark.parametrize("argv", [
    ["eval", "kv", "--model", "no-such-model", "--no-niah"],
    ["eval", "kv", "--kv", "turbo9", "--no-niah"],
    ["eval", "kv", "--tokens", "10", "--context", "512"],
    ["eval", "kv", "--kv-k", "q4_0:qr", "--no-niah"],
])
def test_bad_input_is_one_line_and_status_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error:")


@pytest.mark.slow
def test_real_smollm2_short_run(smollm2_gguf, capsys):
    from lowbit.eval.kv import evaluate_kv

    kw = dict(tokens=96, context=96, chunk=24, niah_lengths=(), progress=False)
    f16 = evaluate_kv("smollm2-135m", "f16", **kw)
    assert f16["kld"] < 1e-4 and f16["top1"] == 1.0  # the reference against itself
    q8 = evaluate_kv("smollm2-135m", "q8_0", **kw)
    t2 = evaluate_kv("smollm2-135m", "turbo2", **kw)
    assert q8["ppl_f16"] == f16["ppl_f16"]
    assert 0 <= q8["kld"] < t2["kld"] and t2["top1"] < 1.0
    assert (t2["head_dim"], t2["kv_heads"], t2["tokens"]) == (64, 3, 47)
    assert main(["eval", "kv", "--kv-k", "q8_0", "--kv-v", "turbo4", "--tokens", "96", "--context", "96",
                 "--chunk", "24", "--no-niah", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= set(out) and (out["kv_k"], out["kv_v"]) == ("q8_0", "turbo4")
    assert out["bits_per_value"] == pytest.approx((8.5 + 4.25) / 2)
