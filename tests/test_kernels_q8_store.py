"""The fused q8_0 store kernel (`lowbit.kernels.q8_store`) against the torch path's bytes (gguf's, computed on
the device: `lowbit.kernels.q8`), through Triton's interpreter on the CPU; differences only at float32 ties
(`store_check.check_q8_store`), which also must catch a real difference."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from lowbit.kernels import q8  # noqa: E402
from lowbit.kernels.params import q8_params  # noqa: E402
from lowbit.kernels.q8_store import q8_store  # noqa: E402
from lowbit.kernels.store_check import check_q8_store  # noqa: E402
from lowbit.quant.kv_baselines import make_codec  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _x(n, d, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.logspace(-2, 2, n)[:, None]  # scales 0.01..100
    x[3] = 0.0  # a zero vector: d = 0, codes 0
    x[4, :32] = 0.0  # one zero block
    return x.to(dtype)


@pytest.mark.parametrize("spec", ["q8_0", "q8_0:norot"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bytes_are_the_torch_paths(spec, head_dim, dtype):
    p = q8_params(make_codec(spec, head_dim, seed=3, keys=True), DEV)
    assert (p.rot is None) == spec.endswith("norot")
    x = _x(70, head_dim, head_dim, dtype)  # 70 rows: a partial last tile of 32
    got = q8_store(p, x.to(DEV))
    assert got.shape == (70, p.vector_bytes)
    assert check_q8_store(p, x.to(DEV), got) <= 2
    assert not got[3].view(-1, 34)[:, 2:].any()  # a zero vector: zero codes
    if p.rot is None:  # a zero block stays one only unrotated (the rotation mixes it with its neighbours)
        assert not got[4, :34].any()


def test_strided_input_and_an_output_slice():
    p = q8_params(make_codec("q8_0", 128, seed=1, keys=True), DEV)
    x = _x(40, 256, 5, torch.bfloat16)[:, :128].to(DEV)  # every row strided by 256 values
    buf = torch.full((41, p.vector_bytes), 0xAB, dtype=torch.uint8, device=DEV)
    q8_store(p, x, out=buf[1:])
    assert (buf[0] == 0xAB).all()
    assert torch.equal(buf[1:].cpu(), q8_store(p, x.contiguous()).cpu())
    assert check_q8_store(p, x, buf[1:]) <= 2


def test_the_check_catches_a_wrong_code_and_a_wrong_scale():
    p = q8_params(make_codec("q8_0", 128, seed=2, keys=True), DEV)
    x = _x(8, 128, 9, torch.float32).to(DEV)
    good = q8.store(p, x)
    wrong_code = good.clone()
    wrong_code[0, 10] ^= 0x40
    with pytest.raises(AssertionError, match="code"):
        check_q8_store(p, x, wrong_code)
    wrong_scale = good.clone()
    wrong_scale[1, 0] ^= 0x10
    with pytest.raises(AssertionError, match="scale"):
        check_q8_store(p, x, wrong_scale)


def test_a_rotation_that_is_not_plus_minus_one_takes_the_torch_path():
    from dataclasses import replace

    from lowbit.kernels.q8_store import fused

    p = q8_params(make_codec("q8_0", 128, seed=4, keys=True), DEV)
    q, _ = torch.linalg.qr(torch.randn(128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    dense = replace(p, rot=q.float().to(DEV))
    assert fused(p) and not fused(dense)
    x = _x(9, 128, 1, torch.float32).to(DEV)
    assert torch.equal(q8_store(dense, x).cpu(), q8.store(dense, x).cpu())


@pytest.mark.parametrize("B,H,n", [(2, 3, 1), (1, 2, 4)])
def test_store_into_a_slice_of_the_cache(B, H, n):
    p = q8_params(make_codec("q8_0", 128, seed=2, keys=True), DEV)
    x = _x(B * H * n, 128, 11, torch.bfloat16).reshape(B, H, n, 128).to(DEV)
    want = q8_store(p, x).cpu()
    cache = torch.full((B, H, 7, p.vector_bytes), 0x5A, dtype=torch.uint8, device=DEV)
    q8_store(p, x, out=cache[:, :, 2:2 + n])
    assert torch.equal(cache[:, :, 2:2 + n].cpu(), want)
    outside = torch.ones(7, dtype=torch.bool)
    outside[2:2 + n] = False
    assert (cache[:, :, outside].cpu() == 0x5A).all()
