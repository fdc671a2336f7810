"""Ternary (BitNet b1.58 absmean) stored through gguf's TQ1_0/TQ2_0, the reference ladder, the
strong 1-bit methods and the one-call API's byte accounting."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.formats.weights import weight_type
from lowbit.quant import binarize, ternary
from lowbit.quant import weights


@pytest.fixture(scope="module")
def real(gemma3_gguf) -> dict[str, np.ndarray]:
    """Two real Gemma 3 270M tensors and a calibration-like Hessian for the first."""
    from lowbit.eval.lm import gguf_tensor

    return {name: np.array(gguf_tensor(gemma3_gguf, name)) for name in ("blk.3.attn_output.weight", "blk.0.ffn_gate.weight")}


def test_absmean_by_hand():
    # gamma = mean|x| = (0.1 + 0.4 + 0.9 + 2.6) / 4 = 1.0; x / gamma rounds to 0, 0, 1(-> -1 for -0.9), 3 -> clip 1
    x = np.array([0.1, -0.4, -0.9, 2.6], dtype=np.float32)
    q, gamma = ternary.absmean(x)
    assert gamma.tolist() == pytest.approx([1.0])
    assert q.tolist() == [0, 0, -1, 1]
    # round half to even, as torch.round in BitNet: 0.5 -> 0, 1.5 -> 2 -> clipped to 1
    q, gamma = ternary.absmean(np.array([0.5, -1.5, 1.0, 1.0], dtype=np.float32))
    assert gamma[0] == 1.0 and q.tolist() == [0, -1, 1, 1]


@pytest.mark.parametrize("fmt", ["TQ1_0", "TQ2_0"])
def test_ternary_storage_is_lossless_up_to_fp16(fmt, real):
    w = real["blk.3.attn_output.weight"]  # 1024 columns: whole 256-blocks
    for method, group in (("absmean", None), ("absmean-group", 256)):
        t = ternary.ternarize(w, group)
        data = weights.quantize(w, fmt, method).data
        assert data.nbytes == weight_type(fmt).tensor_bytes(w.shape[::-1])
        back = ternary.dequantize(data, fmt)
        np.testing.assert_allclose(back, t, rtol=1e-3, atol=0)  # fp16 rounding of gamma only
        levels = np.unique(np.round(back.reshape(-1, 256) / np.abs(back.reshape(-1, 256)).max(axis=1, keepdims=True).clip(1e-30), 3))
        assert set(levels.tolist()) <= {-1.0, 0.0, 1.0}


def test_amax_ref_zeroes_most_real_weights(real):
    # gguf's TQ quantizer on ordinary weights (llama-quantize's behaviour): d = amax, most weights -> 0
    w = real["blk.3.attn_output.weight"]
    back = ternary.dequantize(weights.quantize(w, "TQ1_0", "ref").data, "TQ1_0")
    assert (back == 0).mean() > 0.8
    absmean_back = ternary.dequantize(weights.quantize(w, "TQ1_0", "absmean-group").data, "TQ1_0")
    assert np.mean((w - absmean_back) ** 2) < np.mean((w - back) ** 2)


def test_ternary_refuses_partial_blocks():
    with pytest.raises(LowbitError, match="divides by 256"):
        ternary.quantize(np.ones((2, 640), dtype=np.float32), "TQ2_0")


@pytest.mark.parametrize("fmt", ["Q1_0", "TQ1_0", "TQ2_0", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "MXFP4", "F16"])
def test_api_bytes_equal_the_definition(fmt, real):
    w = real["blk.3.attn_output.weight"]
    q = weights.quantize(w, fmt)
    wt = weight_type(fmt)
    assert q.nbytes == wt.tensor_bytes(w.shape[::-1])
    assert q.bits_per_weight == pytest.approx(float(wt.bits_per_weight))
    assert q.values.shape == w.shape and q.gguf_type is not None
    np.testing.assert_array_equal(weights.dequantize(q.data, fmt, w.shape[1]), q.values)


def test_arb_layout_counts_every_byte(real):
    w = real["blk.0.ffn_gate.weight"]
    q = weights.quantize(w, "ARB1", "arb")
    assert binarize.ARB_LAYOUT.block_bytes == 20  # fp16 alpha + fp16 mu + 128 sign bits
    assert q.nbytes == w.shape[0] * binarize.ARB_LAYOUT.row_bytes(w.shape[1])
    assert q.bits_per_weight == pytest.approx(1.25)
    np.testing.assert_array_equal(weights.dequantize(q.data, "ARB1", w.shape[1]), q.values)
    # a trailing partial group (576 = 4 x 128 + 64) still stores its own alpha, mu and 64 sign bits
    q = weights.quantize(w[:, :576], "ARB1", "arb")
    assert q.data.shape[1] == 4 * 20 + (4 + 8)
    np.testing.assert_array_equal(weights.dequantize(q.data, "ARB1", 576), q.values)
    assert q.gguf_type is None


def test_rotation_is_orthogonal_and_counted():
    w = np.random.default_rng(1).standard_normal((5, 640)).astype(np.float32)
    np.testing.assert_allclose(binarize.rotate_back(binarize.rotate(w, 7), 7), w, atol=1e-5)
    assert binarize.rotation_block(640) == 128 and binarize.rotation_block(576) == 64
    q = weights.quantize(w, "Q1_0", "rht")
    assert q.nbytes == weight_type("Q1_0").tensor_bytes((640, 5)) + binarize.SEED_BYTES
    assert q.gguf_type is None  # llama.cpp would need rotated activations


def _hessian(ne0: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # correlated inputs (a low-rank signal plus noise), as real activations are; with independent
    # inputs H is diagonal and GPTQ has nothing to compensate
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((64, ne0)).astype(np.float32)
    x = rng.standard_normal((2048, 64)).astype(np.float32) @ mix + 0.3 * rng.standard_normal((2048, ne0)).astype(np.float32)
    return x, x.T @ x / len(x)


def test_gptq_q1_0_is_a_valid_q1_0_tensor_with_lower_output_error(real):
    w = real["blk.0.ffn_gate.weight"][:256]
    x, h = _hessian(w.shape[1])
    ref = weights.quantize(w, "Q1_0", "ref")
    g = weights.quantize(w, "Q1_0", "gptq", hessian=h)
    assert g.gguf_type is not None and g.nbytes == ref.nbytes
    np.testing.assert_array_equal(weights.dequantize(g.data, "Q1_0", w.shape[1]), g.values)  # bytes say what it computes
    out_err = lambda v: float(np.mean((x @ (w - v).T) ** 2))  # noqa: E731
    assert out_err(g.values) < 0.9 * out_err(ref.values)


def test_arb_beats_q1_0_weight_error(real):
    w = real["blk.3.attn_output.weight"]
    mse = lambda q: float(np.mean((w - q.values) ** 2))  # noqa: E731
    assert mse(weights.quantize(w, "ARB1", "arb")) < mse(weights.quantize(w, "Q1_0", "ref"))


def test_padding_is_explicit_and_counted():
    w = np.random.default_rng(2).standard_normal((3, 576)).astype(np.float32)
    with pytest.raises(LowbitError, match="no fallback type for Q1_0"):
        weights.quantize(w, "Q1_0")
    q = weights.quantize(w, "Q1_0", pad=True)
    assert q.nbytes == 3 * 5 * 18 and q.bits_per_weight == pytest.approx(1.25)
    assert q.gguf_type is None and q.values.shape == w.shape


def test_bad_input_is_one_clear_error():
    with pytest.raises(LowbitError, match="NaN or Inf"):
        weights.quantize(np.array([[np.nan] * 32], dtype=np.float32), "Q4_0", name="blk.0.x")
    with pytest.raises(LowbitError, match="no method"):
        weights.quantize(np.ones((1, 128), np.float32), "Q1_0", "magic")
    with pytest.raises(LowbitError, match="needs calibration"):
        weights.quantize(np.ones((1, 128), np.float32), "Q1_0", "gptq")
    with pytest.raises(LowbitError, match="unknown weight format"):
        weights.quantize(np.ones((1, 128), np.float32), "Q0_5")
    z = weights.quantize(np.zeros((2, 256), np.float32), "TQ1_0", "absmean")  # all-zero rows stay zero
    assert not z.values.any()
    z = weights.quantize(np.zeros((2, 128), np.float32), "ARB1", "arb")
    assert not z.values.any()


def test_every_registered_method_keeps_its_own_promises():
    # one class per method: what it says about itself (calibration, llama.cpp loading, side bytes) is what it does
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    _, h = _hessian(256)
    seen = 0
    for fmt in weights.formats():
        names = weights.methods(fmt)
        assert weights.method_for(fmt) is weights.method_for(fmt, names[0])  # the first is the default
        for name in names:
            method = weights.method_for(fmt, name)
            assert (method.name, fmt in method.formats) == (name, True)
            if method.calibrated:
                with pytest.raises(LowbitError, match="needs calibration"):
                    weights.quantize(w, fmt, name)
            q = weights.quantize(w, fmt, name, hessian=h)
            assert (q.fmt, q.method, q.side_bytes) == (fmt, name, method.side_bytes)
            assert (q.gguf_type is not None) == method.loadable
            if method.replaces_in_mix:
                assert not method.loadable and weights.replaces_in_mix(fmt) == method.replaces_in_mix
            seen += 1
    assert seen == 4 + 4 + 2 * 3 + 9


def test_a_method_name_is_registered_once_per_format():
    with pytest.raises(TypeError, match="already has a method 'gptq'"):
        class Again(weights.WeightMethod, name="gptq", formats=("Q1_0",)):  # noqa: F841
            pass
    assert weights.method_for("Q1_0", "gptq") is weights.Q1_0Gptq
    assert weights.methods("Q1_0") == ("ref", "gptq", "rht", "rht-gptq")
    assert weights.methods("ARB1") == ("arb", "arb-gptq", "rht-arb", "rht-arb-gptq")
    assert weights.replaces_in_mix("ARB1") == "Q1_0" and weights.replaces_in_mix("Q1_0") is None
