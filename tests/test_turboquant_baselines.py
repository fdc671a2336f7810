"""KV baselines in the TurboQuant harness: ggml types via gguf, iq4_nl, fp8, KIVI (llama.cpp's rotation and vLLM's
fp8 scale: test_llamacpp_kv_rotation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from lowbit.errors import LowbitError
from lowbit.formats.kv import KV_FAMILIES, KV_FORMATS, GGMLKV, KiviKV, parse_kv_spec
from lowbit.quant.kv_baselines import KiviKeys, NativeCodec, make_codec
from lowbit.quant.kv_codec import codec_class

GGML = [n for n, f in KV_FORMATS.items() if isinstance(f, GGMLKV)]
KIVI = [n for n, f in KV_FORMATS.items() if isinstance(f, KiviKV)]


@pytest.mark.parametrize("name", GGML + KIVI + ["fp8", "fp8:amax", "q4_0:norot", "q8_0:norot"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_packed_bytes_equal_the_format_definition(name, d):
    c = make_codec(name, d, seed=1)
    p = c.quantize(torch.randn(2, 3, 5, d))
    assert p.dtype == torch.uint8 and p.shape == (2, 3, 5, KV_FORMATS[name.split(":")[0]].vector_bytes(d))
    assert c.dequantize(p).shape == (2, 3, 5, d)


@pytest.mark.parametrize("name", KIVI)
@pytest.mark.parametrize("d", [64, 80, 96, 128])
def test_kivi_values_and_keys_bytes(name, d):
    fmt = KV_FORMATS[name]
    assert make_codec(name, d).quantize(torch.randn(7, d)).shape[-1] == fmt.vector_bytes(d)
    k = KiviKeys(fmt, d)
    g = k.quantize_group(torch.randn(2, 32, d))
    assert g.shape == (2, k.group_bytes)
    if d % 32 == 0:  # keys carry D scale/zero pairs per 32 tokens = the definition's per-vector count
        assert k.group_bytes == 32 * fmt.vector_bytes(d)


def test_ggml_types_need_a_divisible_head_dim():
    with pytest.raises(LowbitError):
        make_codec("q4_0", 80)


@pytest.mark.parametrize("name", ["f16", "bf16", "f32"])
def test_native_torch_bytes_equal_gguf(name):
    x = torch.randn(64, 128) * 100
    x[0, 0] = float("nan")
    codec = make_codec(name, 128)
    assert isinstance(codec, NativeCodec)  # the float family's codec: torch casts, on any device
    ours = codec.quantize(x).numpy()
    theirs = np.ascontiguousarray(quants.quantize(x.numpy(), T[name.upper()])).view(np.uint8).reshape(64, -1)
    assert np.array_equal(ours[1:], theirs[1:])  # NaN payloads may differ; NaN stays NaN:
    assert torch.isnan(codec.dequantize(torch.from_numpy(ours))[0, 0])


def _q8_0_inputs(device) -> torch.Tensor:
    """Random blocks, and blocks made to hit the rounding edges: exact halves after scaling, zeros, one value."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 256, generator=g) * torch.logspace(-6, 4, 96)[:, None]
    x[0] = 0.0
    x[1, :] = 0.0
    x[1, 5] = -3.5
    x[2] = torch.arange(256) % 32 - 15.5  # d = 127 / 127 = 1: every value an exact half after x / d
    x[2, ::32] = 127.0
    x[3] = torch.arange(256) - 128.0
    return x.to(device)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_q8_0_in_torch_is_gguf_byte_for_byte_on_the_device(device):
    x = _q8_0_inputs(device)
    codec = make_codec("q8_0:norot", 256)
    ours = codec.quantize(x)
    assert ours.device.type == device  # quantized where the tensor lives, no trip through host memory
    theirs = np.ascontiguousarray(quants.quantize(x.cpu().numpy(), T.Q8_0)).view(np.uint8).reshape(96, -1)
    assert np.array_equal(ours.cpu().numpy(), theirs)
    back = codec.dequantize(ours)
    assert back.device.type == device
    assert torch.equal(back.cpu(), torch.from_numpy(quants.dequantize(theirs, T.Q8_0).reshape(96, 256)))
    # rotated (llama.cpp's default): gguf's bytes of the rotated vectors, still on the device
    rot = make_codec("q8_0", 256)
    packed = rot.quantize(x)
    assert packed.device.type == device
    rotated = np.ascontiguousarray(rot.rotate(x).cpu().numpy())
    assert np.array_equal(packed.cpu().numpy(),
                          np.ascontiguousarray(quants.quantize(rotated, T.Q8_0)).view(np.uint8).reshape(96, -1))


def test_q8_0_and_q4_0_error_is_within_half_a_step():
    x = torch.randn(500, 64)
    # q8_0: d = amax/127, symmetric, half a step; q4_0: d = max/-8 over codes -8..7, so the side
    # opposite the largest magnitude can be a whole step off.
    for name, levels, steps in (("q8_0", 127, 0.5), ("q4_0", 8, 1.0)):
        c = make_codec(f"{name}:norot", 64)
        y = c.dequantize(c.quantize(x))
        step = x.reshape(-1, 32).abs().amax(-1, keepdim=True) / levels
        assert ((y - x).reshape(-1, 32).abs() <= step * steps * 1.01 + 1e-3).all(), name


def test_iq4_nl_bytes_decode_with_gguf_and_beat_q4_0():
    x = torch.randn(4000, 64)
    iq = make_codec("iq4_nl:norot", 64)
    p = iq.quantize(x)
    y = torch.from_numpy(quants.dequantize(p.numpy(), T.IQ4_NL)).reshape(4000, 64)  # gguf's own decoder
    assert torch.equal(y, iq.dequantize(p))
    q4 = make_codec("q4_0:norot", 64)
    err = lambda c: float((c.dequantize(c.quantize(x)) - x).pow(2).mean())  # noqa: E731
    assert err(iq) < 0.9 * err(q4)
    # zero blocks stay zero
    assert torch.equal(iq.dequantize(iq.quantize(torch.zeros(3, 64))), torch.zeros(3, 64))


def test_kivi_error_bound_and_constant_groups():
    x = torch.randn(300, 64)
    for name, bits in (("kivi2", 2), ("kivi4", 4)):
        c = make_codec(name, 64)
        y = c.dequantize(c.quantize(x))
        g = x.reshape(300, 2, 32)
        step = (g.amax(-1) - g.amin(-1)) / ((1 << bits) - 1)
        assert ((y - x).reshape(300, 2, 32).abs() <= step.unsqueeze(-1) * 0.5 + 2e-2).all()
    const = torch.full((2, 64), 3.0)
    assert torch.allclose(make_codec("kivi2", 64).dequantize(make_codec("kivi2", 64).quantize(const)), const)


def test_fp8_amax_per_tensor_scale_saturation_and_nan():
    c = make_codec("fp8:amax", 64)
    c.calibrate(torch.full((1, 64), 10.0))
    x = torch.randn(5, 64)
    x[0, 0], x[1, 1] = 1e6, float("nan")
    y = c.dequantize(c.quantize(x))
    assert y[0, 0] == pytest.approx(10.0, rel=1e-6)  # saturates at the calibrated range
    assert torch.isnan(y[1, 1])
    assert torch.allclose(y[2:], x[2:], rtol=0.07, atol=10 / 448 * 2**-6)


def test_spec_parsing():
    assert parse_kv_spec("TURBO3:qr,nonc")["rotation"] == "qr"
    assert parse_kv_spec("turbo3:qr,nonc")["norm_correction"] is False
    assert parse_kv_spec("turbo3")["norm_correction"] is True
    assert parse_kv_spec("turbo3:center")["center"] and not parse_kv_spec("turbo3")["center"]
    assert parse_kv_spec("q4_0:rot")["rot"] and parse_kv_spec("q4_0:rot").name == "q4_0:rot"
    for bad in ("turbo9", "q4_0:qr", "turbo3:rot", "kivi2:nc"):
        with pytest.raises(LowbitError):
            parse_kv_spec(bad)


def test_every_family_is_one_registered_class_with_a_codec():
    """Each KV format belongs to a registered family class, and each family has a codec class registered
    under its kind: make_codec finds it without knowing the families."""
    assert {f.kind for f in KV_FORMATS.values()} == set(KV_FAMILIES)
    for kind, family in KV_FAMILIES.items():
        assert family.kind == kind and codec_class(kind).__name__
    assert codec_class("kivi", keys=True) is KiviKeys
    for name in KV_FORMATS:
        d = 128
        assert make_codec(name, d).vector_bytes == KV_FORMATS[name].vector_bytes(d)
