"""TurboQuant: codebooks, rotations, bit packing, byte layouts and the paper's distortion claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from lowbit.errors import LowbitError
from lowbit.formats.kv import KV_FORMATS, TurboKV
from lowbit.quant.codebooks import lloyd_max, lower_bound, prod_variance_bound, unit_mse
from lowbit.quant.packing import pack_bits, packed_bytes, unpack_bits
from lowbit.quant.rotation import dense_qr, randomized_hadamard, rotation
from lowbit.quant.turboquant import TurboQuant

TURBO = [n for n, f in KV_FORMATS.items() if isinstance(f, TurboKV)]
HEAD_DIMS = [64, 80, 96, 128, 256]


# --- codebooks ------------------------------------------------------------------------------------
# Reference values from the research brief (§1.4), computed there independently by Lloyd iteration
# with scipy quadrature; the paper quotes 0.36, 0.117, 0.03, 0.009.
GAUSS_D = {1: 0.36338, 2: 0.11748, 3: 0.03455, 4: 0.00950}
BETA64_D = {1: 0.35839, 2: 0.11453, 3: 0.03339, 4: 0.00913}
BETA128_D = {1: 0.36089, 2: 0.11600, 3: 0.03397, 4: 0.00931}
BETA128_C = {1: [0.7994], 2: [0.4525, 1.5052], 3: [0.2444, 0.7533, 1.3366, 2.1315],
             4: [0.1279, 0.3864, 0.6536, 0.9371, 1.2478, 1.6043, 2.0459, 2.6889]}


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_codebook_values_match_the_brief(b):
    assert unit_mse(b, None) == pytest.approx(GAUSS_D[b], abs=6e-6)
    assert unit_mse(b, 64) == pytest.approx(BETA64_D[b], abs=6e-6)
    assert unit_mse(b, 128) == pytest.approx(BETA128_D[b], abs=6e-6)
    pos = [c * math.sqrt(128) for c in lloyd_max(b, 128).centroids if c > 0]
    assert pos == pytest.approx(BETA128_C[b], abs=6e-5)
    assert unit_mse(b, 128) > lower_bound(b)


def _beta_pdf(d):
    k = special.gamma(d / 2) / (math.sqrt(math.pi) * special.gamma((d - 1) / 2))
    return lambda x: k * (1 - x * x) ** ((d - 3) / 2)


@pytest.mark.parametrize("b,d", [(2, 64), (3, 96), (4, 128)])
def test_codebook_is_a_lloyd_max_fixed_point_by_quadrature(b, d):
    """Independent check with numerical integration of Lemma 1's density: centroids are conditional
    means of their cells, thresholds are midpoints, and the reported MSE is the integral."""
    cb = lloyd_max(b, d)
    f = _beta_pdf(d)
    edges = [-1.0, *cb.thresholds, 1.0]
    mse = 0.0
    for i, c in enumerate(cb.centroids):
        lo, hi = edges[i], edges[i + 1]
        p = integrate.quad(f, lo, hi, epsabs=1e-14)[0]
        m = integrate.quad(lambda x: x * f(x), lo, hi, epsabs=1e-14)[0]
        assert m / p == pytest.approx(c, rel=1e-6, abs=1e-9)
        mse += integrate.quad(lambda x: (x - c) ** 2 * f(x), lo, hi, epsabs=1e-14)[0]
    assert np.allclose(cb.thresholds, (np.array(cb.centroids[1:]) + cb.centroids[:-1]) / 2)
    assert cb.coord_mse == pytest.approx(mse, rel=1e-6)


def test_beta_tends_to_gaussian_and_bounds():
    for b in (1, 2, 3, 4):
        assert unit_mse(b, 64) < unit_mse(b, 128) < unit_mse(b, 4096) < unit_mse(b, None)
        assert unit_mse(b, 4096) == pytest.approx(unit_mse(b, None), rel=2e-3)
    # Theorem 2 with exact constants (1.571, 0.571, 0.184, 0.054 over d, computed independently)
    for b, k in zip((1, 2, 3, 4), (1.5708, 0.5708, 0.1845, 0.0543)):
        assert prod_variance_bound(b, 10**6, "gaussian") * 10**6 == pytest.approx(k, abs=2e-4)
    with pytest.raises(LowbitError):
        lloyd_max(3, 2)
    with pytest.raises(LowbitError):
        lloyd_max(3, 64, "laplace")


# --- rotations ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,d", [("qr", 64), ("qr", 96), ("hadamard", 64), ("hadamard", 256)])
def test_rotations_are_orthogonal_and_seeded(kind, d):
    r = rotation(kind, d, seed=3, dtype=torch.float64)
    assert torch.allclose(r @ r.T, torch.eye(d, dtype=torch.float64), atol=1e-12)
    assert torch.equal(r, rotation(kind, d, seed=3, dtype=torch.float64))
    assert not torch.equal(r, rotation(kind, d, seed=4, dtype=torch.float64))


def test_rotation_constructions():
    h = randomized_hadamard(8, 0) * math.sqrt(8)
    assert torch.equal(h.abs(), torch.ones(8, 8, dtype=torch.float64))  # ±1 entries
    q = dense_qr(32, 1)
    assert torch.allclose(q.T @ q, torch.eye(32, dtype=torch.float64), atol=1e-12)
    with pytest.raises(LowbitError):
        rotation("hadamard", 96, 0)


# --- packing --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 70), lead=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_pack_unpack_roundtrip(bits, n, lead, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (lead, n), generator=g)
    p = pack_bits(codes, bits)
    assert p.dtype == torch.uint8 and p.shape == (lead, packed_bytes(n, bits))
    assert torch.equal(unpack_bits(p, bits, n), codes)


def test_bit_order_is_little_endian():
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]  # low nibble first, as ggml
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [0x81]
    # 3-bit: code i at bits [3i, 3i+3): 7 | 1<<3 | 5<<6 = 0b1_01_001_111 -> bytes 0x4f, 0x01
    assert pack_bits(torch.tensor([7, 1, 5]), 3).tolist() == [0x4F, 0x01]


# --- TurboQuant byte layout -----------------------------------------------------------------------
def _quantizer(name, d, **kw):
    q = TurboQuant(name, d, **kw)
    if q.layout.outlier_channels:
        q.calibrate(torch.randn(64, d, generator=torch.Generator().manual_seed(1)))
    return q


@pytest.mark.parametrize("name", TURBO)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_packed_bytes_equal_the_format_definition(name, d):
    q = _quantizer(name, d)
    x = torch.randn(2, 3, 5, d)
    p = q.quantize(x)
    assert p.dtype == torch.uint8
    assert p.shape == (2, 3, 5, KV_FORMATS[name].vector_bytes(d))
    # and the fields are exactly TurboLayout.fields(block), in order, per block
    fields = KV_FORMATS[name].turbo.fields(q.block)
    assert p.shape[-1] == math.ceil(d / q.block) * sum(math.ceil(b / 8) for _, b in fields)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(TURBO), d=st.sampled_from([64, 80, 128, 256]), seed=st.integers(0, 2**31))
def test_pack_unpack_is_bit_exact_on_arbitrary_bytes(name, d, seed):
    """Every byte of a turbo block is meaningful, so unpack∘pack must reproduce any byte string, and
    pack∘unpack any field set (fp16 norms by bit pattern, NaNs included)."""
    q = _quantizer(name, d)
    raw = torch.randint(0, 256, (4, q.vector_bytes), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    f = q.unpack(raw)
    assert torch.equal(q.pack(f), raw)
    f2 = q.unpack(q.pack(f))
    for k in f:
        assert torch.equal(f[k].view(torch.int16) if f[k].dtype == torch.float16 else f[k],
                           f2[k].view(torch.int16) if f2[k].dtype == torch.float16 else f2[k])


@pytest.mark.parametrize("name", ["turbo3", "turbo4-prod", "turbo3.5"])
def test_packed_decode_equals_unpacked_decode_up_to_fp16_norms(name):
    q = _quantizer(name, 128)
    x = torch.randn(50, 128)
    f = q.encode(x)
    ref = q.decode({k: (v.half() if v.is_floating_point() else v) for k, v in f.items()})
    assert torch.equal(q.dequantize(q.quantize(x)), ref)


@pytest.mark.parametrize("name,bits", [("turbo2", 2), ("turbo3", 3), ("turbo4", 4)])
def test_real_head_vectors_error_matches_lloyd_max(name, bits):
    """Non-unit vectors with norms: relative MSE is the unit-vector Lloyd-Max value (block 128)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 128, generator=g) * torch.rand(3000, 1, generator=g) * 10
    q = TurboQuant(name, 128, rotation_kind="qr", seed=5)
    xr = q.dequantize(q.quantize(x))
    rel = ((xr - x).pow(2).sum(-1) / x.pow(2).sum(-1)).mean().item()
    assert rel == pytest.approx(unit_mse(bits, 128), rel=0.03)


def test_norm_correction_keeps_the_norm_and_prod_does_not_use_it():
    x = torch.randn(200, 64)
    q = TurboQuant("turbo3", 64, norm_correction=True)
    xr = q.decode(q.encode(x))
    assert torch.allclose(xr.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    assert not TurboQuant("turbo3-prod", 64, norm_correction=True).norm_correction


def test_outlier_split_gives_outliers_more_bits_and_separate_norms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 300, 64, generator=g)
    x[:, 1, :, 7] *= 30  # a heavy channel in head 1
    q = TurboQuant("turbo2.5", 64)
    ids = q.calibrate(x, keep_dims=(1,))
    assert ids.shape == (1, 4, 1, 1, 16)
    assert 7 in ids[0, 1, 0, 0].tolist()
    f = q.encode(x)
    assert f["outlier_idx"].shape[-1] == 16 and f["regular_idx"].shape[-1] == 48
    assert int(f["outlier_idx"].max()) < 8 and int(f["regular_idx"].max()) < 4  # 3 and 2 bits
    # the split beats plain 2-bit on data with an outlier channel
    rel = lambda y: ((y - x).pow(2).sum(-1) / x.pow(2).sum(-1)).mean().item()  # noqa: E731
    assert rel(q.dequantize(q.quantize(x))) < rel(TurboQuant("turbo2", 64).dequantize(TurboQuant("turbo2", 64).quantize(x)))
    with pytest.raises(LowbitError):
        TurboQuant("turbo3.5", 64).encode(x)  # not calibrated


# --- robustness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TURBO)
def test_zero_nan_inf_and_odd_head_dims(name):
    d = 96  # not a power of two: zero-padded to one 128 block
    q = _quantizer(name, d)
    x = torch.randn(6, d)
    x[0] = 0
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    x[3, 0] = -float("inf")
    y = q.dequantize(q.quantize(x))
    assert y.shape == (6, d)
    assert torch.equal(y[0], torch.zeros(d))
    assert torch.isnan(y[1:4]).all()
    assert torch.isfinite(y[4:]).all()
    assert q.quantize(torch.empty(0, d)).shape == (0, q.vector_bytes)
    with pytest.raises(LowbitError):
        q.quantize(torch.randn(3, d + 1))


def test_non_power_of_two_padding_is_exact_for_vectors_in_the_subspace():
    """Padding puts zeros after the real values; they are dropped on decode and cost no accuracy:
    a d=80 vector quantized in its 128 block has at most the 128-block's relative error."""
    x = torch.randn(2000, 80)
    q = TurboQuant("turbo4", 80, rotation_kind="qr")
    assert q.block == 128 and q.n_blocks == 1
    xr = q.dequantize(q.quantize(x))
    rel = ((xr - x).pow(2).sum(-1) / x.pow(2).sum(-1)).mean().item()
    assert rel < unit_mse(4, 128) * 1.02


# --- the paper's claims ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def distortion128():
    from lowbit.eval.distortion import measure

    return measure(128, samples=6000, seed=0, per_draw=200)


def test_measured_mse_within_2_percent_of_lloyd_max_and_above_the_bound(distortion128):
    for r in distortion128["rows"]:
        assert abs(r["mse"] / r["lloyd_max"] - 1) < 0.02, r
        assert r["mse"] > r["lower_bound"]


def test_prod_is_unbiased_and_its_variance_is_within_the_bound(distortion128):
    d = distortion128["dim"]
    for r in distortion128["rows"]:
        assert abs(r["prod_bias"]) < 4 * r["prod_bias_stderr"], r  # mean within its confidence interval
        assert r["prod_variance"] < r["prod_variance_bound"] + 4 * r["prod_variance_stderr"], r
        # and not trivially small: the exact variance is (π/2 - 1/d)·D_mse(b-1)/d
        expect = (math.pi / 2 - 1 / d) * unit_mse(r["bits"] - 1, d) / d
        assert abs(r["prod_variance"] - expect) < 4 * r["prod_variance_stderr"], r


def test_mse_b1_shows_the_two_over_pi_bias(distortion128):
    r1 = distortion128["rows"][0]
    assert r1["ip_scale"] == pytest.approx(2 / math.pi, abs=0.01)  # E<x, x~> = 1 - D ≈ 2/π
    assert r1["ip_scale"] == pytest.approx(1 - r1["lloyd_max"], abs=0.005)
    assert abs(r1["prod_bias"]) < 0.01  # while prod has none


def test_distortion_at_d64_with_hadamard():
    from lowbit.eval.distortion import measure

    res = measure(64, samples=3000, seed=1, rotation="hadamard", bits_range=(2, 4), per_draw=300)
    for r in res["rows"]:
        assert abs(r["mse"] / r["lloyd_max"] - 1) < 0.02, r


def test_distortion_cli_json(capsys):
    import json

    from lowbit.cli import main

    assert main(["eval", "distortion", "--dim", "32", "--samples", "400", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dim"] == 32 and [r["bits"] for r in out["rows"]] == [1, 2, 3, 4]
    for key in ("bits", "mse", "lloyd_max", "lower_bound", "prod_bias", "prod_variance", "prod_variance_bound"):
        assert key in out["rows"][0]
    assert main(["eval", "distortion", "--dim", "2"]) == 2
    assert main(["eval", "distortion", "--dim", "96", "--rotation", "hadamard"]) == 2


def test_centering_removes_a_channel_offset_at_no_byte_cost():
    """lowbit's `center` option: keys with a common per-channel offset (most of SmolLM2's key energy)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 200, 64, generator=g) + 5 * torch.randn(1, 3, 1, 64, generator=g)
    rel = lambda q: float(((q.dequantize(q.quantize(x)) - x) ** 2).sum() / (x**2).sum())  # noqa: E731
    plain, centered = TurboQuant("turbo3", 64), TurboQuant("turbo3", 64, center=True)
    assert centered.needs_calibration
    with pytest.raises(LowbitError):
        centered.encode(x)
    centered.calibrate(x, keep_dims=(1,))
    assert centered.mean.shape == (1, 3, 1, 64)
    assert centered.quantize(x).shape == plain.quantize(x).shape
    # the offset is 25x the per-token spread in energy: centering leaves only the spread to quantize
    assert rel(centered) < 0.2 * rel(plain)
    assert rel(centered) < unit_mse(3, 64) * 1.1 * float(((x - x.mean(2, keepdim=True)) ** 2).sum() / (x**2).sum())
    with pytest.raises(LowbitError):
        TurboQuant("turbo3", 64).calibrate(x)  # nothing to calibrate
