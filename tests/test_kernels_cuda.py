"""The CUDA decode kernel (`lowbit.kernels.cuda_decode`).

CI has no GPU, so on the CPU this checks what the kernel's correctness rests on:
- `kernel_dim_order` against an emulation of the `mma.m16n8k16` fragment layout (PTX ISA): lane (g, c)
  unpacks units c, c+4, ... of token g, and pairs (2j, 2j+1) of unit c+4i are its B fragment of k-step
  4i+j. The emulated tensor-core product of the permuted queries with those fragments must equal q·k;
- `rotate_queries` (Triton, interpreter) against torch: rotation, scale, that order, zero padding rows.
On a GPU the kernel itself runs against the reference (dequantize + float32 attention).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from lowbit import kernels  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.kernels import cuda_decode, reference  # noqa: E402
from lowbit.kernels.params import turbo_params  # noqa: E402
from lowbit.kernels.turbo_attention import rotate_queries, turbo_decode_attention  # noqa: E402
from lowbit.quant.turboquant import TurboQuant  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATTN_TOL = 3e-3


@pytest.mark.parametrize("D", [128, 256])
def test_kernel_dim_order_matches_the_mma_fragment_layout(D):
    perm = cuda_decode.kernel_dim_order(D)
    assert sorted(perm.tolist()) == list(range(D))
    g = torch.Generator().manual_seed(D)
    q = torch.randn(16, D, generator=g, dtype=torch.float64)  # rows, storage order
    k = torch.randn(8, D, generator=g, dtype=torch.float64)   # the 8 tokens of one n8 tile, storage order
    qk = q[:, perm]                                            # what rotate_queries hands the kernel
    s = torch.zeros(16, 8, dtype=torch.float64)
    for ks in range(D // 16):                                  # mma.m16n8k16, k-step ks
        i, j = divmod(ks, 4)
        b = torch.zeros(16, 8, dtype=torch.float64)            # B[k][n] as the lanes hold it
        for lane in range(32):
            n, c = lane >> 2, lane & 3
            unit = c + 4 * i                                   # the unit this lane unpacked for k-step ks
            for r in range(2):                                 # fragment register r = pair 2j + r of the unit
                for e in range(2):                             # low / high half of the fp16 pair
                    b[2 * c + 8 * r + e, n] = k[n, 16 * unit + 2 * (2 * j + r) + e]
        s += qk[:, 16 * ks:16 * ks + 16] @ b                   # A[row][k] = QK[row][16 ks + k]
    assert torch.allclose(s, q @ k.T, rtol=0, atol=1e-9)


@pytest.mark.parametrize("fmt,D,Hq,Hkv,LQ", [("turbo3", 256, 16, 1, 1), ("turbo3", 128, 8, 2, 1),
                                             ("turbo4", 256, 6, 2, 2)])
def test_rotate_queries_matches_torch(fmt, D, Hq, Hkv, LQ):
    tq = TurboQuant(fmt, D, seed=7)
    pk = turbo_params(tq, DEV)
    q = torch.randn(2, Hq, LQ, D, generator=torch.Generator().manual_seed(1))
    scale = 0.37
    got = rotate_queries(q.to(DEV), pk, Hkv, scale).cpu().float()
    st = tq.stages[0]
    y = (q.double() * scale * math.log2(math.e)).reshape(2, Hq, LQ, D // 128 if D >= 128 else 1, -1) @ st.rot.double().T
    y = y.reshape(2, Hkv, Hq // Hkv * LQ, D)[..., cuda_decode.kernel_dim_order(D)]
    want = torch.zeros(2 * Hkv, 16, D, dtype=torch.float64)
    want.view(2, Hkv, 16, D)[:, :, :Hq // Hkv * LQ] = y
    assert got.shape == (2 * Hkv, 16, D)
    assert (got.double() - want).abs().max() <= 2e-3 * want.abs().max()  # fp16 operands and output
    assert (got.view(2, Hkv, 16, D)[:, :, Hq // Hkv * LQ:] == 0).all()


def test_cuda_backend_refuses_what_it_does_not_cover():
    tk, tv = TurboQuant("turbo4", 128, seed=1), TurboQuant("turbo3", 128, seed=2)
    q = torch.randn(1, 4, 1, 128)
    kp, vp = tk.quantize(torch.randn(1, 1, 20, 128)), tv.quantize(torch.randn(1, 1, 20, 128))
    with pytest.raises(LowbitError, match="CUDA decode kernel"):
        turbo_decode_attention(q.to(DEV), kp.to(DEV), vp.to(DEV), turbo_params(tk, DEV), turbo_params(tv, DEV),
                               backend="cuda")
    with pytest.raises(LowbitError, match="unknown decode backend"):
        turbo_decode_attention(q.to(DEV), kp.to(DEV), vp.to(DEV), turbo_params(tk, DEV), turbo_params(tv, DEV),
                               backend="tpu")


gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_decode.available("cuda")),
                         reason="needs an NVIDIA GPU and NVRTC")


@gpu
@pytest.mark.parametrize("B,Hq,Hkv,D,T,splits", [
    (1, 32, 2, 256, 1000, None),   # Qwen3.5-122B layer: 16 query rows per KV head, a tail step
    (2, 24, 4, 256, 333, 3),       # Qwen3.5-27B: 6 rows (padded), splits ending mid-step
    (3, 32, 8, 128, 4100, None),   # Llama-3.1-8B-like: 4 rows, head_dim 128
    (1, 8, 8, 128, 17, 2),         # MHA, one full step and one token
])
def test_cuda_kernel_matches_reference(B, Hq, Hkv, D, T, splits):
    g = torch.Generator().manual_seed(T)
    tk = TurboQuant("turbo3", D, norm_correction=True, seed=T)
    tv = TurboQuant("turbo3", D, norm_correction=True, seed=T + 1)
    k = torch.randn(B, Hkv, T, D, generator=g) * 1.5
    v = torch.randn(B, Hkv, T, D, generator=g)
    q = torch.randn(B, Hq, 1, D, generator=g) * 2
    kp, vp = tk.quantize(k), tv.quantize(v)
    ref = reference.decode_attention(q.double(), kp, vp, tk, tv)
    out = turbo_decode_attention(q.cuda(), kp.cuda(), vp.cuda(), turbo_params(tk, "cuda"), turbo_params(tv, "cuda"),
                                 splits=splits, backend="cuda").cpu()
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() / ref.abs().max() <= ATTN_TOL


@gpu
def test_the_cache_entry_points_reach_the_cuda_kernel(monkeypatch):
    """What the cache calls (`kernels.supports`, then `kernels.decode_attention` on codecs) launches the CUDA
    kernel once per decode step for turbo3 K and V."""
    tk = TurboQuant("turbo3", 128, norm_correction=True, seed=1)
    tv = TurboQuant("turbo3", 128, norm_correction=True, seed=2)
    assert kernels.supports(tk.spec, tv.spec, 128, "cuda") == kernels.KernelSupport("triton", "triton", "cuda")
    launches = []
    orig = cuda_decode.stage1
    monkeypatch.setattr(cuda_decode, "stage1", lambda *a, **k: launches.append(a[0].shape) or orig(*a, **k))
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 8, 1, 128, generator=g)
    kp, vp = tk.quantize(torch.randn(2, 2, 300, 128, generator=g)), tv.quantize(torch.randn(2, 2, 300, 128, generator=g))
    out = kernels.decode_attention(q.cuda(), kp.cuda(), vp.cuda(), tk, tv).cpu()
    assert len(launches) == 1
    ref = reference.decode_attention(q.double(), kp, vp, tk, tv)
    assert (out.double() - ref).abs().max() / ref.abs().max() <= ATTN_TOL


@gpu
def test_unaligned_rows_and_a_cache_slice():
    """Rows that start at any even byte (here a cache of 31 tokens seen from token 1) take the CUDA kernel;
    vectors that are not back to back (a strided view) fall back to Triton."""
    tq = TurboQuant("turbo3", 128, seed=3)
    q = torch.randn(2, 4, 1, 128)
    kp = tq.quantize(torch.randn(2, 1, 31, 128)).cuda()
    pk = turbo_params(tq, "cuda")
    view = kp[:, :, 1:]
    assert cuda_decode.supported(pk, pk, 4, 1, view, view)
    ref = reference.decode_attention(q.double(), view.cpu(), view.cpu(), tq, tq)
    out = turbo_decode_attention(q.cuda(), view, view, pk, pk, backend="cuda").cpu()
    assert (out.double() - ref).abs().max() / ref.abs().max() <= ATTN_TOL
    wide = torch.zeros(2, 1, 31, 2 * pk.vector_bytes, dtype=torch.uint8, device="cuda")
    wide[..., :pk.vector_bytes] = kp
    strided = wide[..., :pk.vector_bytes]
    assert not cuda_decode.supported(pk, pk, 4, 1, strided, strided)
    ref = reference.decode_attention(q.double(), kp.cpu(), kp.cpu(), tq, tq)
    out = turbo_decode_attention(q.cuda(), strided, strided, pk, pk).cpu()  # auto: the Triton kernel
    assert (out.double() - ref).abs().max() / ref.abs().max() <= ATTN_TOL
