"""The llama.cpp KV types are stored as llama.cpp 0c1e57098 stores them: Hadamard-rotated (PR #21038), and the fp8
format is vLLM 0.33.0's cast with scale 1.0. The reference transform is written here from llama.cpp's definition
(ggml_gen_hadamard: H[i][j] = (-1)^popcount(i & j) / sqrt(n); y = H·x per contiguous block of n values), not from
lowbit's code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from lowbit.cache.cache import QuantizedKVLayer
from lowbit.errors import LowbitError
from lowbit.formats.kv import KV_FORMATS, GGMLKV, parse_kv_spec
from lowbit.quant.kv_baselines import GGMLCodec, HadamardCodec, NativeCodec, _iq4_nl_quantize, make_codec

QUANTIZED = ["q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "iq4_nl"]


def hadamard_by_definition(n: int) -> np.ndarray:
    return np.array([[(-1) ** bin(i & j).count("1") for j in range(n)] for i in range(n)], dtype=np.float64) / math.sqrt(n)


def rotate_by_definition(x: np.ndarray, n: int) -> np.ndarray:
    """y = H·x for each contiguous run of n values along the last axis (llama_mul_mat_hadamard)."""
    h = hadamard_by_definition(n)
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // n, n)
    return np.einsum("ij,...bj->...bi", h, xb).reshape(x.shape)


def fixed_vectors(d: int) -> np.ndarray:
    """Deterministic, with a few large channels (the outliers the rotation spreads)."""
    i = np.arange(4 * d, dtype=np.float64).reshape(4, d)
    x = np.sin(0.37 * i + 0.1) + 0.5 * np.cos(1.3 * i * i / d)
    x[:, 3] *= 25.0
    x[:, d // 2 + 1] *= -12.0
    return x


@pytest.mark.parametrize("d, k_block, v_block", [(64, 64, 64), (128, 128, 64), (192, 64, 64), (256, 256, 64),
                                                   (320, 64, 64), (512, 512, 64)])
def test_block_sizes_follow_llamacpp(d, k_block, v_block):
    spec = parse_kv_spec("q4_0")
    assert spec.fmt.rotation_block(spec, d, keys=True) == k_block
    assert spec.fmt.rotation_block(spec, d, keys=False) == v_block
    k, v = make_codec("q4_0", d, keys=True), make_codec("q4_0", d, keys=False)
    assert isinstance(k, HadamardCodec) and isinstance(v, HadamardCodec)
    assert (k.block, v.block) == (k_block, v_block)


@pytest.mark.parametrize("d", [80, 96, 160])
def test_head_dim_not_a_multiple_of_64_is_not_rotated(d):
    spec = parse_kv_spec("q8_0")
    assert spec.fmt.rotation_block(spec, d, keys=True) == 0 == spec.fmt.rotation_block(spec, d, keys=False)
    if d % 32 == 0:  # a ggml block must still divide head_dim; such a cache is stored unrotated, not refused
        for keys in (True, False):
            c = make_codec("q8_0", d, keys=keys)
            assert isinstance(c, GGMLCodec) and c.spec.name == "q8_0"


@pytest.mark.parametrize("name", QUANTIZED)
@pytest.mark.parametrize("d", [64, 128, 192, 256])
def test_rotation_equals_llamacpp_transform_on_fixed_vectors(name, d):
    x = fixed_vectors(d)
    for keys, block in ((True, d & -d if d & -d >= 64 else 64), (False, 64)):
        c = make_codec(name, d, keys=keys)
        assert c.block == block
        ours = c.rotate(torch.from_numpy(x).float()).double().numpy()
        ref = rotate_by_definition(x, block)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(x).max())
        # H is its own inverse: the load side un-rotates with the same matrix
        back = c.rotate(torch.from_numpy(ref).float()).double().numpy()
        np.testing.assert_allclose(back, x, rtol=0, atol=1e-5 * np.abs(x).max())


@pytest.mark.parametrize("name", [n for n in QUANTIZED if n != "iq4_nl"])
def test_stored_bytes_are_the_type_of_the_rotated_vector(name):
    """What is stored is gguf's quantization of H·x (llama.cpp writes the rotated K/V to the cache), and the load
    is H times gguf's dequantization."""
    d = 128
    x = fixed_vectors(d)
    rx = rotate_by_definition(x, d).astype(np.float32)
    c = make_codec(name, d, keys=True)
    packed = c.quantize(torch.from_numpy(x).float()).numpy()
    theirs = np.ascontiguousarray(quants.quantize(rx, T[name.upper()])).view(np.uint8).reshape(packed.shape)
    assert np.array_equal(packed, theirs)
    deq = quants.dequantize(packed, T[name.upper()]).reshape(x.shape).astype(np.float64)
    np.testing.assert_allclose(c.dequantize(torch.from_numpy(packed)).double().numpy(),
                               rotate_by_definition(deq, d), rtol=0, atol=1e-5 * np.abs(deq).max())


@pytest.mark.parametrize("name", ["f16", "bf16", "f32"])
def test_float_types_are_never_rotated(name):
    for d in (64, 128, 256):
        for keys in (True, False):
            assert isinstance(make_codec(name, d, keys=keys), NativeCodec)
    spec = parse_kv_spec(name)
    assert spec.fmt.rotation_block(spec, 128, keys=True) == 0
    with pytest.raises(LowbitError):
        parse_kv_spec(f"{name}:rot")


@pytest.mark.parametrize("name", QUANTIZED)
def test_norot_is_the_unrotated_codec_bit_for_bit(name):
    d = 128
    x = torch.from_numpy(fixed_vectors(d)).float()
    c = make_codec(f"{name}:norot", d, keys=True)
    assert isinstance(c, GGMLCodec)
    p = c.quantize(x)
    if name == "iq4_nl":
        old = _iq4_nl_quantize(x.numpy())
    else:
        old = quants.quantize(x.numpy(), T[name.upper()])
    assert np.array_equal(p.numpy(), np.ascontiguousarray(old).view(np.uint8).reshape(p.shape))
    assert torch.equal(c.dequantize(p), GGMLCodec(KV_FORMATS[name], d).dequantize(p))
    assert not torch.equal(make_codec(name, d).quantize(x), p)  # the default is not this one


def test_rot_option_is_the_default_written_out():
    assert parse_kv_spec("q4_0")["rot"] and parse_kv_spec("q4_0:rot")["rot"]
    assert not parse_kv_spec("q4_0:norot")["rot"]
    x = torch.from_numpy(fixed_vectors(64)).float()
    assert torch.equal(make_codec("q4_0:rot", 64).quantize(x), make_codec("q4_0", 64).quantize(x))
    with pytest.raises(LowbitError):
        parse_kv_spec("q4_0:rot,norot")


def _cache_round_trip(k_spec: str, v_spec: str, k: torch.Tensor, v: torch.Tensor):
    layer = QuantizedKVLayer(parse_kv_spec(k_spec), parse_kv_spec(v_spec))
    out_k, out_v = layer.update(k, v)
    return layer, out_k, out_v


def test_rotation_reduces_q4_0_error_through_the_cache_on_outliers():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 300, 128, generator=g)
    v = torch.randn(1, 2, 300, 128, generator=g)
    k[..., 7] *= 30  # an outlier channel, as real keys have
    v[..., 70] *= 30
    err = {}
    for spec in ("q4_0", "q4_0:norot"):
        layer, ok, ov = _cache_round_trip(spec, spec, k, v)
        err[spec] = (float((ok - k).pow(2).mean()), float((ov - v).pow(2).mean()))
        nbytes = layer.k_store.nbytes() + layer.v_store.nbytes()
        assert nbytes == 2 * 2 * 300 * KV_FORMATS["q4_0"].vector_bytes(128)  # same bytes, rotated or not
    assert err["q4_0"][0] < 0.5 * err["q4_0:norot"][0]
    assert err["q4_0"][1] < 0.5 * err["q4_0:norot"][1]


def test_k_and_v_are_decided_independently():
    k = torch.randn(1, 1, 4, 256)
    layer, _, ov = _cache_round_trip("q4_0", "f16", k, k.clone())
    assert isinstance(layer.k_store.codec, HadamardCodec) and layer.k_store.codec.block == 256
    assert isinstance(layer.v_store.codec, NativeCodec)
    assert torch.equal(ov, k.half().float())
    layer, _, _ = _cache_round_trip("f16", "q8_0", k, k.clone())
    assert isinstance(layer.k_store.codec, NativeCodec) and layer.v_store.codec.block == 64


def test_every_quantized_llamacpp_type_is_rotated_by_default():
    rotated = {n for n, f in KV_FORMATS.items() if isinstance(f, GGMLKV) and isinstance(make_codec(n, 128), HadamardCodec)}
    assert rotated == set(QUANTIZED)


# --- fp8 as vLLM 0.33.0 without checkpoint scales -----------------------------------------------
def test_fp8_is_an_e4m3_cast_with_scale_one():
    c = make_codec("fp8", 64)
    assert not c.needs_calibration and c.scale == 1.0
    x = torch.zeros(2, 64)
    vals = [0.5, 1.0, 1.0625, 448.0, 1000.0, -1e6, 2.0**-9, 2.0**-11, 3.3, float("nan")]
    x[0, : len(vals)] = torch.tensor(vals)
    y = c.dequantize(c.quantize(x))[0, : len(vals)]
    # exact e4m3 values pass through; beyond ±448 saturates; 2^-9 is the smallest subnormal, 2^-11 flushes to 0;
    # 3.3 rounds to the nearest e4m3 (steps of 0.25 in [2, 4))
    assert y[:9].tolist() == [0.5, 1.0, 1.0, 448.0, 448.0, -448.0, 2.0**-9, 0.0, 3.25]
    assert torch.isnan(y[9])
    # no calibration: the result of a vector does not depend on what was stored before
    small = torch.full((1, 64), 0.01)
    c2 = make_codec("fp8", 64)
    c2.quantize(small * 1000)
    assert torch.equal(c2.dequantize(c2.quantize(small)), c.dequantize(c.quantize(small)))
    with pytest.raises(LowbitError):
        c.calibrate(small)


def test_fp8_amax_keeps_the_calibrated_scale():
    c = make_codec("fp8:amax", 64)
    assert c.needs_calibration
    c.calibrate(torch.full((1, 64), 10.0))
    assert c.scale == pytest.approx(10.0 / 448)
    # a small value lands among e4m3's coarse subnormals at scale 1.0 and among its normals once scaled up
    x, unit = torch.full((1, 64), 0.003), make_codec("fp8", 64)
    err_amax = float((c.dequantize(c.quantize(x)) - x).abs().max())
    err_unit = float((unit.dequantize(unit.quantize(x)) - x).abs().max())
    assert err_amax < 0.25 * err_unit
    assert float(c.dequantize(c.quantize(torch.full((1, 64), 1e6)))[0, 0]) == pytest.approx(10.0, rel=1e-6)
