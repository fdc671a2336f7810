"""Triton KV-cache kernels against the CPU reference (TRITON_INTERPRET=1 on CPU, compiled on CUDA).

- store: packed bytes and fp16 norms equal `TurboQuant.quantize`, except float32 ties (a rotated value
  within 1e-6 of a Lloyd-Max threshold, or a norm at an fp16 rounding midpoint), each checked in float64;
- attention: max|out - ref| / max|ref| <= ATTN_TOL per shape, ref = reference dequantize + float32 attention.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from lowbit import kernels  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.kernels import reference  # noqa: E402
from lowbit.kernels.params import turbo_params  # noqa: E402
from lowbit.kernels.store_check import check_store  # noqa: E402
from lowbit.kernels.turbo_attention import turbo_decode_attention, turbo_dequantize  # noqa: E402
from lowbit.kernels.turbo_store import turbo_store  # noqa: E402
from lowbit.quant.turboquant import TurboQuant  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATTN_TOL = 3e-3  # fp16 dot operands (rotated q, codebook values, norms), float32 accumulation
DEQ_TOL = 2e-3


_check_store = check_store  # the rule lives in lowbit.kernels.store_check (the GPU benchmark uses it too)


@pytest.mark.parametrize("fmt,head_dim,dtype,nc,rot", [
    ("turbo3", 128, torch.float32, True, "hadamard"),
    ("turbo3", 256, torch.bfloat16, True, "hadamard"),
    ("turbo4", 128, torch.float16, False, "hadamard"),
    ("turbo2", 64, torch.float32, True, "hadamard"),
    ("turbo4", 64, torch.float32, True, "qr"),
])
def test_store_matches_reference_bytes(fmt, head_dim, dtype, nc, rot):
    g = torch.Generator().manual_seed(head_dim + len(fmt))
    tq = TurboQuant(fmt, head_dim, rotation_kind=rot, norm_correction=nc, seed=7)
    x = (torch.randn(2, 3, 21, head_dim, generator=g) * 3).to(dtype)
    x[0, 0, 0, 5] = float("nan")  # its block must store a NaN norm
    x[1, 2, 3] = 0  # a zero vector stays zero
    got = turbo_store(turbo_params(tq, DEV), x.to(DEV))
    assert _check_store(tq, x, got) <= 2  # ties are rare: a handful per million values


def test_store_into_preallocated_slice():
    tq = TurboQuant("turbo3", 128, seed=1)
    x = torch.randn(1, 2, 5, 128)
    buf = torch.full((1, 2, 5, tq.vector_bytes), 0xAB, dtype=torch.uint8, device=DEV)
    kernels.store(tq, x.to(DEV), out=buf) if DEV == "cuda" else turbo_store(turbo_params(tq, DEV), x, out=buf)
    assert _check_store(tq, x, buf) == 0


def _attn_case(B, Hq, Hkv, D, T, LQ, kf, vf, splits, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    tk = TurboQuant(kf, D, norm_correction=True, seed=seed)
    tv = TurboQuant(vf, D, norm_correction=True, seed=seed + 1)
    k = torch.randn(B, Hkv, T, D, generator=g) * 1.5
    v = torch.randn(B, Hkv, T, D, generator=g)
    q = torch.randn(B, Hq, LQ, D, generator=g) * 2
    kp, vp = tk.quantize(k), tv.quantize(v)
    ref = reference.decode_attention(q.double(), kp, vp, tk, tv)
    out = turbo_decode_attention(q.to(DEV), kp.to(DEV), vp.to(DEV), turbo_params(tk, DEV), turbo_params(tv, DEV),
                                 splits=splits, **kw).cpu()
    assert torch.isfinite(out).all()
    return (out.double() - ref.double()).abs().max().item() / ref.abs().max().item()


@pytest.mark.parametrize("B,Hq,Hkv,D,T,LQ,kf,vf,splits", [
    (2, 8, 2, 128, 100, 1, "turbo3", "turbo3", 3),   # GQA 4, tail tile and splits
    (1, 16, 1, 256, 70, 1, "turbo4", "turbo3", 2),   # GQA 16, two 128-blocks, asymmetric K/V
    (1, 6, 2, 256, 40, 2, "turbo3", "turbo2", 1),    # 2 new tokens (causal), group 3 padded to 16 rows
    (2, 4, 4, 64, 33, 1, "turbo2", "turbo4", 4),     # MHA, head_dim 64
])
def test_decode_attention_matches_reference(B, Hq, Hkv, D, T, LQ, kf, vf, splits):
    assert _attn_case(B, Hq, Hkv, D, T, LQ, kf, vf, splits, seed=B * 100 + D + T) <= ATTN_TOL


@pytest.mark.parametrize("block_n,prefetch", [(32, True), (128, False)])
def test_decode_attention_other_tiles(block_n, prefetch):
    """The non-default tile sizes and the register-prefetch variant the benchmark also times."""
    assert _attn_case(1, 8, 2, 256, 150, 1, "turbo3", "turbo3", 2, seed=9, block_n=block_n,
                      prefetch=prefetch) <= ATTN_TOL


def test_decode_attention_head_dim_512_uses_the_reference():
    tq = TurboQuant("turbo3", 512, seed=4)
    q = torch.randn(1, 2, 1, 512)
    kp = tq.quantize(torch.randn(1, 1, 6, 512))
    with pytest.raises(LowbitError):
        turbo_decode_attention(q, kp, kp, turbo_params(tq, DEV), turbo_params(tq, DEV))
    assert torch.allclose(kernels.decode_attention(q, kp, kp, tq, tq), reference.decode_attention(q, kp, kp, tq, tq))


def test_dequantize_matches_reference():
    tq = TurboQuant("turbo3", 256, seed=5)
    p = tq.quantize(torch.randn(1, 2, 19, 256))
    got = turbo_dequantize(turbo_params(tq, DEV), p.to(DEV), torch.float32).cpu()
    ref = tq.dequantize(p)
    assert (got - ref).abs().max() / ref.abs().max() <= DEQ_TOL


def test_dispatch_cpu_uses_reference_and_rejects_other_formats():
    tq = TurboQuant("turbo3", 64, seed=2)
    x = torch.randn(1, 1, 4, 64)
    assert torch.equal(kernels.store(tq, x), tq.quantize(x))  # CPU tensors: the reference
    with pytest.raises(LowbitError):
        turbo_params(TurboQuant("turbo3-prod", 64), DEV)
    q = torch.randn(1, 2, 1, 64)
    kp = tq.quantize(torch.randn(1, 1, 4, 64))
    with pytest.raises(LowbitError):  # queries of another head_dim
        turbo_decode_attention(torch.randn(1, 2, 1, 128), kp, kp, turbo_params(tq, DEV), turbo_params(tq, DEV))
    out = kernels.decode_attention(q, kp, kp, tq, tq)
    assert torch.allclose(out, reference.decode_attention(q, kp, kp, tq, tq))


def test_cache_backend_falls_back_to_the_reference_off_cuda():
    from lowbit.cache import KernelBackend, TorchBackend, make_store

    fused, ref = make_store("turbo3", 64, keys=True, seed=3), make_store("turbo3", 64, keys=True, seed=3)
    x = torch.randn(1, 2, 5, 64)
    KernelBackend().store(fused, x)
    TorchBackend().store(ref, x)
    assert torch.equal(fused.packed, ref.packed)
    assert torch.equal(KernelBackend().load(fused, torch.float32), TorchBackend().load(ref, torch.float32))


def test_kernels_declare_what_they_take(monkeypatch):
    """The named hand-off: which implementation stores K, stores V and decodes, per setting and device."""
    S = kernels.KernelSupport
    assert kernels.supports("turbo3", "q8_0", 128, "cpu") == S("reference", "reference", "reference")
    assert kernels.supports("kivi2", "turbo3", 128, "cpu").decode is None  # keys grouped over tokens
    assert "groups of 32 tokens" in kernels.supports("kivi2", "turbo3", 128, "cpu").reason
    assert kernels.supports("turbo3", "kivi2", 128, "cpu").decode == "reference"  # KIVI values are per token
    monkeypatch.setattr(kernels, "_cuda_decode_available", lambda device: False)  # no GPU needed to ask
    cuda = torch.device("cuda")
    assert kernels.supports("turbo4", "turbo3", 128, cuda) == S("triton", "triton", "triton")
    assert kernels.supports("turbo3", "turbo3", 512, cuda) == S("triton", "triton", "reference")  # > 256: no decode
    assert kernels.supports("turbo3:center", "turbo3", 128, cuda) == S("reference", "triton", "reference")
    assert kernels.supports("turbo3-prod", "q8_0", 128, cuda) == S("reference", "triton", "reference")
    assert kernels.supports("turbo3-prod", "q8_0", 96, cuda) == S("reference", "torch", "reference")
    assert kernels.supports("turbo3", "turbo3", 96, cuda) == S("reference", "reference", "reference")
    monkeypatch.setenv("LOWBIT_KERNELS", "reference")
    assert kernels.supports("turbo3", "turbo3", 128, cuda) == S("reference", "reference", "reference")


def test_the_cuda_kernel_is_declared_for_the_settings_it_compiles():
    cuda = kernels.KERNELS[0]
    assert cuda.name == "cuda" and cuda.ops == {"decode"}
    assert cuda.formats == {"turbo3", "turbo4", "q8_0"} and cuda.value_formats == {"turbo3", "turbo4"}
    assert [d for d in (64, 96, 128, 192, 256, 512) if cuda.head_dims(d)] == [128, 256]
    from lowbit.kernels import cuda_decode

    assert len(cuda_decode.KERNELS) == 2 * 3 * 2  # head dims x K formats x V formats, one template


def test_kernels_take_q8_0_keys_but_not_q8_0_values(monkeypatch):
    S = kernels.KernelSupport
    cuda = torch.device("cuda")
    monkeypatch.setattr(kernels, "_cuda_decode_available", lambda device: True)
    for k in ("q8_0", "q8_0:rot", "turbo3", "turbo4"):
        for v in ("turbo3", "turbo4"):
            assert kernels.supports(k, v, 256, cuda) == S("triton", "triton", "cuda"), (k, v)
    assert kernels.supports("turbo2", "turbo3", 128, cuda) == S("triton", "triton", "triton")
    assert kernels.supports("q8_0", "turbo2", 128, cuda) == S("triton", "triton", "triton")
    assert kernels.supports("turbo3", "q8_0", 128, cuda) == S("triton", "triton", "reference")
    assert kernels.supports("q8_0", "q8_0", 128, cuda).decode == "reference"
    monkeypatch.setattr(kernels, "_cuda_decode_available", lambda device: False)
    assert kernels.supports("q8_0", "turbo4", 128, cuda) == S("triton", "triton", "triton")


@pytest.mark.parametrize("kspec,vf,D,Hq,Hkv,T", [("q8_0", "turbo3", 128, 8, 2, 70), ("q8_0:rot", "turbo4", 256, 6, 2, 40),
                                                ("q8_0", "turbo2", 64, 4, 4, 33)])
def test_decode_attention_q8_0_keys_matches_reference(kspec, vf, D, Hq, Hkv, T):
    """The Triton kernel over q8_0 keys (queries rotated as the codec rotates keys) and TurboQuant values."""
    from lowbit.kernels.params import key_params
    from lowbit.quant.kv_baselines import make_codec

    g = torch.Generator().manual_seed(T)
    kc, vc = make_codec(kspec, D, seed=3, keys=True), TurboQuant(vf, D, norm_correction=True, seed=4)
    k, v = torch.randn(2, Hkv, T, D, generator=g) * 1.5, torch.randn(2, Hkv, T, D, generator=g)
    q = torch.randn(2, Hq, 1, D, generator=g) * 2
    kp, vp = kc.quantize(k), vc.quantize(v)
    ref = reference.decode_attention(q.double(), kp, vp, kc, vc)
    out = turbo_decode_attention(q.to(DEV), kp.to(DEV), vp.to(DEV), key_params(kc, DEV), turbo_params(vc, DEV),
                                 splits=2, backend="triton").cpu()
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() / ref.abs().max() <= ATTN_TOL


def test_q8_0_store_is_gguf_bytes():
    """kernels.q8 (the GPU store, run here on the CPU) writes gguf's bytes, rotated codecs included."""
    from lowbit.kernels import q8
    from lowbit.kernels.params import q8_params
    from lowbit.quant.kv_baselines import make_codec

    g = torch.Generator().manual_seed(2)
    for spec in ("q8_0", "q8_0:rot"):
        for D in (128, 256):
            codec = make_codec(spec, D, seed=3, keys=True)
            x = torch.randn(2, 3, 17, D, generator=g) * 3
            x[0, 0, 0, :32] = 0  # a zero block: scale 0, codes 0
            x[1, 1, 1, 5] = 1e4  # one outlier dominates its block's scale
            p = q8.store(q8_params(codec, "cpu"), x)
            assert torch.equal(p, codec.quantize(x)), (spec, D)
            assert torch.allclose(q8.dequantize(q8_params(codec, "cpu"), p), codec.dequantize(p), rtol=0, atol=1e-3)


def test_kernels_know_nothing_of_transformers():
    import ast
    import pathlib

    for path in pathlib.Path(kernels.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "transformers" or n.startswith("lowbit.cache") for n in names), \
                (path.name, names)
