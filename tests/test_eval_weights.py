"""`lowbit eval weights` on the real SmolLM2 file: its JSON keys, sane quality ordering,
exact bit accounting for the padded 1-bit layout, and one-line refusals."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main
from lowbit.eval.weights import evaluate_weights, quantized_weights, tensor_types
from lowbit.errors import LowbitError

KEYS = {"model", "weights", "method", "bits_per_weight", "tokens", "context", "ppl", "ppl_reference", "kld", "top1"}
FEW = dict(tokens=64, context=32, progress=False)  # 2 windows: keeps the CPU suite fast


# Every test here runs the real SmolLM2 (skipped with its install line where the package is missing).
pytestmark = pytest.mark.usefixtures("smollm2_gguf")


def test_json_has_its_keys_and_q8_0_is_near_lossless(capsys):
    assert main(["eval", "weights", "--model", "smollm2-135m", "--weights", "Q8_0", "--tokens", "64",
                 "--context", "32", "--format", "json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert KEYS <= set(r)
    assert r["model"] == "smollm2-135m" and r["context"] == 32 and r["tokens"] == 2 * 15
    assert r["kld"] < 0.05 and r["top1"] > 0.85
    assert abs(r["ppl"] / r["ppl_reference"] - 1) < 0.1


def test_stored_is_the_file_as_it_is_and_shipped_still_works(capsys):
    argv = ["eval", "weights", "--model", "smollm2-135m", "--tokens", "64", "--context", "32", "--format", "json"]
    assert main(argv + ["--weights", "stored"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert stored["weights"] == "stored" and stored["method"] is None and abs(stored["kld"]) < 1e-4
    assert stored["ppl"] == pytest.approx(stored["ppl_reference"])
    assert main(argv + ["--weights", "shipped"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["weights"] == "stored" and "now called stored" in out.err


def test_one_bit_is_far_worse_than_q8_0():
    q8 = evaluate_weights("smollm2-135m", "Q8_0", **FEW)
    q1 = evaluate_weights("smollm2-135m", "Q1_0", pad=True, **FEW)
    assert q1["kld"] > 10 * q8["kld"] and q1["ppl"] > q8["ppl"]


def test_padded_q1_0_bits_are_counted_exactly():
    _, bits, own = quantized_weights("smollm2-135m", "Q1_0", None, pad=True, progress=False)
    assert own == "Q1_0"
    # per layer: q, o (576x576), k, v (576x192 rows of 576), gate, up (1536 rows of 576) at 5 blocks of
    # 18 bytes per 576-row (1.25 bpw); ffn_down (576 rows of 1536 = 12 whole blocks) at 1.125 bpw
    padded = 2 * 576 * 576 + 2 * 192 * 576 + 2 * 1536 * 576
    whole = 576 * 1536
    assert bits["body_bits_per_weight"] == pytest.approx((1.25 * padded + 1.125 * whole) / (padded + whole))


def test_refusals_are_one_line(capsys):
    with pytest.raises(LowbitError, match="no fallback for Q1_0"):
        quantized_weights("smollm2-135m", "Q1_0", None, progress=False)
    assert main(["eval", "weights", "--model", "smollm2-135m", "--weights", "Q1_0", "--method", "nope"]) == 2
    assert main(["eval", "weights", "--model", "nosuchmodel", "--weights", "Q1_0"]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and all(e.startswith("lowbit: error:") for e in errs)


def test_arb1_takes_the_place_of_q1_0_in_the_mix():
    # lowbit's own ARB1 goes where the (padded) Q1_0 mix puts Q1_0; every other tensor keeps the mix's type
    from lowbit.models.local import model_path

    path = model_path("smollm2-135m")
    padded_q1 = tensor_types(path, "Q1_0", pure=False, pad=True)
    arb = tensor_types(path, "ARB1", pure=False, pad=False)
    assert arb == {n: ("ARB1" if t == "Q1_0" else t) for n, t in padded_q1.items()}
    assert "ARB1" in arb.values() and "Q8_0" in arb.values()
    with pytest.raises(LowbitError, match="no fallback for Q1_0"):
        tensor_types(path, "Q1_0", pure=False, pad=False)
