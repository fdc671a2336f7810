"""lowbit.quant.ggml_torch: ggml's KV block types in torch give gguf's bytes (on the CPU here; on a GPU when one
is there), and a cache on a non-CPU device uses them."""

import numpy as np
import pytest
import torch

from lowbit.quant import ggml_torch
from lowbit.formats.kv import kv_format
from lowbit.quant.kv_baselines import GGMLCodec, _iq4_nl_quantize

TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]


def _inputs(head_dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 40, head_dim, generator=g)
    x[0, 0, 1] *= 1e-3  # tiny values: the scale's fp16 rounding
    x[0, 0, 2] *= 300.0  # large ones
    x[0, 0, 3] = torch.round(x[0, 0, 3] * 4) / 4  # exact quarter steps: rounding ties
    x[0, 0, 4, :32] = x[0, 0, 4, 0]  # a constant block (max == min)
    x[0, 0, 5, :] = -x[0, 0, 5, :].abs()  # all negative
    x[0, 0, 6, 0], x[0, 0, 6, 1] = 2.0, -2.0  # +-max tie: the first one's sign
    x[1, 2, 7:] += 5.0  # an offset, as keys have
    return x


def _plain(t: str, head_dim: int) -> GGMLCodec:
    """The type's own blocks (no rotation around them): what ggml_torch stands in for."""
    return GGMLCodec(kv_format(t), head_dim)


def _numpy_bytes(x: torch.Tensor, t: str) -> torch.Tensor:
    """The reference bytes: gguf's numpy quantizer (lowbit's numpy one for iq4_nl, which gguf lacks)."""
    from gguf import quants

    a = x.numpy().astype(np.float32)
    out = _iq4_nl_quantize(a) if t == "iq4_nl" else quants.quantize(a, kv_format(t).ggml)
    return torch.from_numpy(np.ascontiguousarray(out).view(np.uint8).reshape(*a.shape[:-1], -1))


def _numpy_values(p: torch.Tensor, t: str, head_dim: int) -> torch.Tensor:
    from gguf import quants

    out = quants.dequantize(np.ascontiguousarray(p.numpy()), kv_format(t).ggml)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32).reshape(*p.shape[:-1], head_dim))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_bytes_equal_gguf(t, head_dim):
    codec = _plain(t, head_dim)
    x = _inputs(head_dim, seed=head_dim)
    ref = _numpy_bytes(x, t)
    mine = ggml_torch.quantize(x, t)
    assert mine.dtype == torch.uint8 and mine.shape == ref.shape == (*x.shape[:-1], codec.vector_bytes)
    assert torch.equal(mine, ref)
    assert torch.equal(ggml_torch.dequantize(ref, t, head_dim), _numpy_values(ref, t, head_dim))
    # the codec on the CPU: numpy for every type but q8_0, which runs in torch everywhere; the same bytes
    assert torch.equal(codec.quantize(x), ref) and codec.in_torch(x) == (t == "q8_0")


@pytest.mark.parametrize("t", ["q4_1", "q5_1"])
def test_a_block_of_signed_zeros_decodes_to_zeros(t):
    x = torch.zeros(1, 64)
    x[0, 33] = -0.0
    p = ggml_torch.quantize(x, t)
    assert torch.equal(ggml_torch.dequantize(p, t, 64), torch.zeros(1, 64))


def test_other_types_and_shapes_are_refused():
    from lowbit.errors import LowbitError

    with pytest.raises(LowbitError):
        ggml_torch.quantize(torch.zeros(1, 48), "q4_0")
    with pytest.raises(LowbitError):
        ggml_torch.quantize(torch.zeros(1, 64), "q2_k")
    assert not ggml_torch.supports("q6_k") and ggml_torch.supports("iq4_nl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("t", TYPES)
def test_cuda_bytes_equal_the_cpu_bytes(t):
    codec = _plain(t, 128)
    x = _inputs(128, seed=3)
    ref = _numpy_bytes(x, t)
    on_gpu = codec.quantize(x.cuda())  # GGMLCodec takes ggml_torch's path on the GPU
    assert on_gpu.is_cuda and codec.in_torch(x.cuda()) and torch.equal(on_gpu.cpu(), ref)
    assert torch.equal(codec.dequantize(ref.cuda()).cpu(), _numpy_values(ref, t, 128))
