"""Q1_0 against llama.cpp's quantize_row_q1_0_ref: hand-computed blocks, a literal transcription of
the C loop, real Gemma 3 tensors, byte counts from the format definition, and edge cases."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import LowbitError
from lowbit.formats.weights import weight_type
from lowbit.quant import q1_0


def c_reference_block(x: np.ndarray) -> bytes:
    """quantize_row_q1_0_ref for one block, statement by statement, float32 scalars throughout."""
    sum_abs = np.float32(0.0)
    for v in x:
        sum_abs = np.float32(sum_abs + np.float32(abs(np.float32(v))))
    d = np.float32(sum_abs / np.float32(128))
    qs = bytearray(16)
    for j in range(128):
        if np.float32(x[j]) >= 0.0:
            qs[j // 8] |= 1 << (j % 8)
    return struct.pack("<e", float(np.float16(d))) + bytes(qs)


def test_hand_computed_block_alternating_pattern():
    # x_j = 2.0 for j % 4 == 0 else -0.5: sum|x| = 32*2 + 96*0.5 = 112, d = 112/128 = 0.875 = fp16 0x3B00
    # bits set at j = 0, 4 (mod 8) -> every sign byte is 0b00010001 = 0x11
    x = np.where(np.arange(128) % 4 == 0, 2.0, -0.5).astype(np.float32)
    got = q1_0.quantize(x).tobytes()
    assert got == bytes([0x00, 0x3B]) + bytes([0x11] * 16)
    back = q1_0.dequantize(np.frombuffer(got, dtype=np.uint8))
    assert np.array_equal(back, np.where(x >= 0, 0.875, -0.875).astype(np.float32))


def test_hand_computed_fp16_ties_round_to_even():
    # d = 1 + 2^-11 lies halfway between fp16 1.0 (0x3C00) and 1+2^-10 (0x3C01): even wins -> 0x3C00.
    # d = 1 + 3*2^-11 lies halfway between 0x3C01 and 0x3C02: even wins -> 0x3C02.
    for d, expected in ((1 + 2**-11, 0x3C00), (1 + 3 * 2**-11, 0x3C02)):
        x = np.zeros(128, dtype=np.float32)
        x[5] = -128 * d  # exact in float32; every other weight is +0 (bit set)
        got = q1_0.quantize(x).tobytes()
        assert got[:2] == struct.pack("<H", expected)
        signs = bytearray([0xFF] * 16)
        signs[0] = 0xFF & ~(1 << 5)  # only x_5 is negative
        assert got[2:] == bytes(signs)


def test_zero_and_negative_zero_read_as_positive():
    x = np.zeros((2, 128), dtype=np.float32)
    x[1] = -0.0
    got = q1_0.quantize(x)
    assert got.shape == (2, 18)
    assert got.tobytes() == (b"\x00\x00" + b"\xff" * 16) * 2  # d = 0, every bit set (x >= 0)
    back = q1_0.dequantize(got)
    assert np.array_equal(back, np.zeros((2, 128))) and not np.signbit(back).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1e-4, 0.02, 1.0, 300.0]))
def test_matches_transcription_of_the_c_loop(seed, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, size=(3, 128)) * scale).astype(np.float32)
    expected = b"".join(c_reference_block(b) for b in x)
    assert q1_0.quantize(x).tobytes() == expected


def test_left_to_right_float32_sum_not_pairwise():
    # Hand-built so summation order flips the fp16 rounding of d. x_0 = 2049 - 2^-12, then 127 x 2^-14.
    # Left to right (the C loop) each 2^-14 is under half an ulp of ~2049 (2^-13) and vanishes:
    #   sum = 2049 - 2^-12, d = 16.0078125 - 2^-19, just below the fp16 tie 16 + 2^-7 -> 16.0 = 0x4C00.
    # Summed pairwise (numpy's sum) the small values survive: d ~ 16.00787 -> 16.015625 = 0x4C01.
    x = np.full(128, 2.0**-14, dtype=np.float32)
    x[0] = 2049 - 2.0**-12
    got = q1_0.quantize(x).tobytes()
    assert got[:2] == struct.pack("<H", 0x4C00) and got[2:] == b"\xff" * 16
    pairwise = np.float16(np.abs(x).sum(dtype=np.float32) / np.float32(128))
    assert pairwise.view(np.uint16) == 0x4C01  # the trap this implementation avoids


def test_packed_bytes_equal_the_definition():
    wt = weight_type("Q1_0")
    for shape in ((1, 128), (7, 640), (3, 2048)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        data = q1_0.quantize(x)
        assert data.nbytes == wt.tensor_bytes(shape[::-1])  # tensor_bytes takes ggml order (ne0 first)
        assert data.shape == (shape[0], wt.row_bytes(shape[1]))
        assert wt.block_bytes * 8 / wt.block == 1.125


def test_refuses_rows_that_are_not_whole_blocks():
    with pytest.raises(LowbitError, match="divides by 128"):
        q1_0.quantize(np.ones((4, 576), dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_refuses_nan_and_inf(bad):
    x = np.ones(256, dtype=np.float32)
    x[200] = bad
    with pytest.raises(LowbitError, match="NaN or Inf"):
        q1_0.quantize(x)


def test_refuses_scale_overflowing_fp16():
    with pytest.raises(LowbitError, match="overflows fp16"):
        q1_0.quantize(np.full(128, 1e5, dtype=np.float32))


@pytest.fixture(scope="module")
def gemma3_tensor(gemma3_gguf) -> np.ndarray:
    """blk.0.ffn_gate.weight of the real Gemma 3 270M file (640 columns: whole Q1_0 blocks)."""
    from lowbit.eval.lm import gguf_tensor

    return np.array(gguf_tensor(gemma3_gguf, "blk.0.ffn_gate.weight"))


def test_real_gemma3_tensor_round_trip(gemma3_tensor):
    w = gemma3_tensor
    data = q1_0.quantize(w)
    rows = w[:4]
    assert data[:4].tobytes() == b"".join(c_reference_block(b) for b in rows.reshape(-1, 128))
    back = q1_0.dequantize(data)
    assert back.shape == w.shape
    # every block dequantizes to +-d with d = mean|x| (to fp16 precision) and the signs of x
    d = np.abs(w.reshape(-1, 128)).mean(axis=1)
    np.testing.assert_allclose(np.abs(back.reshape(-1, 128))[:, 0], d, rtol=1e-3)
    assert np.array_equal(back >= 0, w >= 0)
