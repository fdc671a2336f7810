"""The CUDA decode kernel (`lowbit.kernels.cuda_decode`), every K/V format it takes.

CI has no GPU, so on the CPU this checks what the kernel's correctness rests on:
- `kernel_dim_order` against an emulation of the `mma.m16n8k16` fragment layout (PTX ISA): lane (g, c)
  unpacks its units i = 0, 1, ... of token g (turbo: units c, c+4, ...; q8_0: the halves of 32-blocks c,
  c+4, ...), and pairs (2j, 2j+1) of unit i are its B fragment of k-step 4i+j. The emulated tensor-core
  product of the permuted queries with those fragments must equal q·k;
- the kernel's byte arithmetic, transliterated: `key_unit` and `turbo_unit` (byte offsets, `prmt` lookups,
  q8_0's int8 -> fp16 trick) and the norm offsets, run on packed bytes, must give the codec's values;
- `rotate_queries` (Triton, interpreter) and `q8_queries` against torch: rotation, scale, order, padding.
On a GPU the kernel itself runs against the reference (dequantize + float32 attention), every format.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from lowbit import kernels  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.kernels import cuda_decode, reference  # noqa: E402
from lowbit.kernels.params import key_params, turbo_params  # noqa: E402
from lowbit.kernels.turbo_attention import q8_queries, rotate_queries, turbo_decode_attention  # noqa: E402
from lowbit.kernels.unpack import table_words  # noqa: E402
from lowbit.quant.kv_baselines import make_codec  # noqa: E402
from lowbit.quant.turboquant import TurboQuant  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATTN_TOL = 3e-3


def _unit_dims(kfmt: str, c: int, i: int) -> list[int]:
    """The 16 storage dimensions, in order, of lane c's unit i (what key_unit reads)."""
    first = 32 * (c + 4 * (i >> 1)) + 16 * (i & 1) if kfmt == "q8_0" else 16 * (c + 4 * i)
    return list(range(first, first + 16))


def _emulated_scores(qk: torch.Tensor, frag, D: int) -> torch.Tensor:
    """mma.m16n8k16 over k-steps: A = qk (16 rows, kernel order), B[k][n] from frag(n, c, i) -> 16 values of
    lane (n, c)'s unit i, fragment register r of k-step 4i+j = values 4j+2r, 4j+2r+1 of the unit."""
    s = torch.zeros(qk.shape[0], 8, dtype=torch.float64)
    for ks in range(D // 16):
        i, j = divmod(ks, 4)
        b = torch.zeros(16, 8, dtype=torch.float64)
        for lane in range(32):
            n, c = lane >> 2, lane & 3
            vals = frag(n, c, i)
            for r in range(2):
                for e in range(2):
                    b[2 * c + 8 * r + e, n] = vals[4 * j + 2 * r + e]
        s += qk[:, 16 * ks:16 * ks + 16] @ b
    return s


@pytest.mark.parametrize("kfmt", ["turbo3", "q8_0"])
@pytest.mark.parametrize("D", [128, 256])
def test_kernel_dim_order_matches_the_mma_fragment_layout(D, kfmt):
    perm = cuda_decode.kernel_dim_order(D, kfmt)
    assert sorted(perm.tolist()) == list(range(D))
    g = torch.Generator().manual_seed(D)
    q = torch.randn(16, D, generator=g, dtype=torch.float64)  # rows, storage order
    k = torch.randn(8, D, generator=g, dtype=torch.float64)   # the 8 tokens of one n8 tile, storage order
    s = _emulated_scores(q[:, perm], lambda n, c, i: k[n, _unit_dims(kfmt, c, i)], D)
    assert torch.allclose(s, q @ k.T, rtol=0, atol=1e-9)
    if kfmt == "turbo3":  # turbo3 and turbo4 share the order; q8_0's differs (a lane owns whole 32-blocks)
        assert torch.equal(cuda_decode.kernel_dim_order(D, "turbo4"), perm)
        assert not torch.equal(cuda_decode.kernel_dim_order(D, "q8_0"), perm)


# --- the kernel's byte arithmetic, transliterated from cuda_decode.SOURCE -----------------------------------
def _byte_perm(x: int, y: int, s: int) -> int:
    src = ((y & 0xFFFFFFFF) << 32) | (x & 0xFFFFFFFF)
    return sum(((src >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n) for n in range(4))


def _spread8(x: int) -> int:
    t = x & 0xFFF000
    x = (x + t * 15) & 0xFFFFFFFF
    t = x & 0x0FC00FC0
    x = (x + t * 3) & 0xFFFFFFFF
    t = x & 0x38383838
    return (x + t) & 0xFFFFFFFF


def _look8(sel, T):
    lo, hi = _byte_perm(T[0], T[1], sel), _byte_perm(T[4], T[5], sel)
    return _byte_perm(lo, hi, 0x5140), _byte_perm(lo, hi, 0x7362)


def _look16(x, T):
    r, mk = x & 0x7777, _byte_perm(0, 0xFFFFFFFF, (x >> 1) & 0x4444)
    ln, lp = _byte_perm(T[0], T[1], r), _byte_perm(T[2], T[3], r)
    hn, hp = _byte_perm(T[4], T[5], r), _byte_perm(T[6], T[7], r)
    lo, hi = (lp & mk) | (ln & ~mk & 0xFFFFFFFF), (hp & mk) | (hn & ~mk & 0xFFFFFFFF)
    return _byte_perm(lo, hi, 0x5140), _byte_perm(lo, hi, 0x7362)


def _u16(buf: bytes, off: int) -> int:
    return buf[off] | (buf[off + 1] << 8)


def _turbo_unit(F, buf, off, T):
    w = [_u16(buf, off + 2 * k) for k in range(F)]
    if F == 3:
        x = _spread8(w[0] | ((w[1] & 0xFF) << 16))
        y = _spread8((w[1] >> 8) | (w[2] << 8))
        return [*_look8(x, T), *_look8(x >> 16, T), *_look8(y, T), *_look8(y >> 16, T)]
    x, y = w[0] | (w[1] << 16), w[2] | (w[3] << 16)
    return [*_look16(x, T), *_look16(x >> 16, T), *_look16(y, T), *_look16(y >> 16, T)]


def _h2(pair: int) -> list[float]:
    return np.array([pair & 0xFFFF, pair >> 16], dtype=np.uint16).view(np.float16).astype(np.float64).tolist()


def _f16(v: float) -> np.float16:
    return np.float16(v)


def _key_unit(F, buf, i, c, T):
    """key_unit<F>: 16 fp16 values (as floats) of lane c's unit i of the token vector in buf."""
    if F == 8:
        blk = c + 4 * (i >> 1)
        d = np.array([_u16(buf, blk * 34)], dtype=np.uint16).view(np.float16)[0]
        out = []
        for m in range(8):
            w = _u16(buf, blk * 34 + 2 + (i & 1) * 16 + 2 * m) ^ 0x8080
            h = _h2(_byte_perm(w, 0x6464, 0x5140))
            out += [float(_f16(_f16(v - 1152.0) * d)) for v in h]  # sub.rn.f16x2, then mul.rn.f16x2
        return out
    bb = 16 * F + 2
    return [v for p in _turbo_unit(F, buf, (i >> 1) * bb + (c + 4 * (i & 1)) * 2 * F, T) for v in _h2(p)]


@pytest.mark.parametrize("kspec,D", [("turbo3", 128), ("turbo4", 256), ("q8_0", 128), ("q8_0", 256)])
def test_key_fragments_from_the_packed_bytes_give_the_scores(kspec, D):
    """The transliterated key_unit on real packed bytes, through the emulated mma, times the norms read at the
    kernel's offsets: the scores of the dequantized keys (in the stored frame)."""
    g = torch.Generator().manual_seed(D + len(kspec))
    codec = make_codec(kspec, D, seed=5) if kspec == "q8_0" else TurboQuant(kspec, D, norm_correction=True, seed=5)
    pk = key_params(codec, "cpu")
    F = 8 if kspec == "q8_0" else pk.bits
    x = torch.randn(8, D, generator=g) * 2
    packed = codec.quantize(x)
    T = [w & 0xFFFFFFFF for w in table_words(pk.centroids)] if F != 8 else [0] * 8
    bufs = [bytes(packed[n].tolist()) for n in range(8)]
    q = torch.randn(16, D, generator=g, dtype=torch.float64)
    if F == 8:
        frame, nblk = pk.rotate(q.float()).double(), 1  # q in the stored frame
    else:
        rot = pk.rot.double()
        frame = (q.reshape(16, -1, pk.block) @ rot.T).reshape(16, D)
        nblk = D // 128
    perm = cuda_decode.kernel_dim_order(D, kspec)
    units = {(n, c, i): _key_unit(F, bufs[n], i, c, T) for n in range(8) for c in range(4) for i in range(D // 64)}
    s = torch.zeros(16, 8, dtype=torch.float64)
    for j in range(nblk):  # one accumulator per K norm block (turbo), or one for all (q8_0: scales inside)
        qk = frame[:, perm].clone()
        if nblk > 1:
            qk[:, [kappa for kappa in range(D) if (kappa >> 4) // 8 != j]] = 0  # k-steps of other blocks
        acc = _emulated_scores(qk, lambda n, c, i: units[(n, c, i)], D)
        if F != 8:
            norms = torch.tensor([float(np.frombuffer(bufs[n][j * (16 * F + 2) + 16 * F:][:2], np.float16)[0])
                                  for n in range(8)], dtype=torch.float64)
            acc = acc * norms
        s += acc
    want = q @ codec.dequantize(packed).double().T
    assert (s - want).abs().max() <= 3e-3 * want.abs().max()


@pytest.mark.parametrize("vfmt,D", [("turbo3", 256), ("turbo4", 128), ("turbo4", 256)])
def test_value_units_from_the_packed_bytes_are_the_codebook_values(vfmt, D):
    """turbo_unit<VF> at V's offsets: unit c + 4i of the token, the codebook values in storage order."""
    tq = TurboQuant(vfmt, D, seed=2)
    pv = turbo_params(tq, "cpu")
    F = pv.bits
    packed = tq.quantize(torch.randn(3, D, generator=torch.Generator().manual_seed(3)))
    idx = tq.unpack(packed)["idx"].reshape(3, D)
    T = [w & 0xFFFFFFFF for w in table_words(pv.centroids)]
    want = pv.centroids.to(torch.float16).double()[idx]
    for n in range(3):
        buf = bytes(packed[n].tolist())
        row = torch.zeros(D, dtype=torch.float64)
        for c in range(4):
            for i in range(D // 64):
                off, u = (i >> 1) * (16 * F + 2) + (c + 4 * (i & 1)) * 2 * F, c + 4 * i
                row[16 * u:16 * u + 16] = torch.tensor([v for p in _turbo_unit(F, buf, off, T) for v in _h2(p)])
        assert torch.equal(row, want[n])


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


@pytest.mark.parametrize("spec,D,Hq,Hkv,keys,triton", [
    ("q8_0", 128, 8, 2, True, True), ("q8_0", 256, 6, 2, True, True),  # llama.cpp's K Hadamard: the whole head
    ("q8_0:norot", 128, 4, 1, True, True),
    ("q8_0:rot", 256, 6, 2, True, True),  # the default, written out
    ("q8_0", 128, 8, 2, False, False)])  # V's 64-blocks, as if they were keys: a rotation per block, torch
def test_q8_queries_match_torch(spec, D, Hq, Hkv, keys, triton):
    codec = make_codec(spec, D, seed=7, keys=keys)
    pk = key_params(codec, DEV)
    q = torch.randn(2, Hq, 1, D, generator=torch.Generator().manual_seed(1))
    got = q8_queries(q.to(DEV), pk, Hkv, 0.37).cpu().double()
    cpu = key_params(make_codec(spec, D, seed=7, keys=keys), "cpu")
    y = cpu.rotate(q).double() * 0.37 * math.log2(math.e)  # the codec's own rotation of the vector
    want = torch.zeros(2, Hkv, 16, D, dtype=torch.float64)
    want[:, :, :Hq // Hkv] = y.reshape(2, Hkv, Hq // Hkv, D)[..., cuda_decode.kernel_dim_order(D, "q8_0")]
    assert (got.view(2, Hkv, 16, D) - want).abs().max() <= 2e-3 * want.abs().max()
    assert (got.view(2, Hkv, 16, D)[:, :, Hq // Hkv:] == 0).all()
    assert ("_qmat" in pk.__dict__) == triton  # the Triton launch caches its permuted matrix
    k = torch.randn(5, D)
    assert torch.allclose(cpu.rotate(q[0, 0]) @ cpu.rotate(k).T, q[0, 0] @ k.T, atol=1e-4)  # q·k unchanged


def test_q8_queries_under_a_dense_rotation_take_torch():
    from dataclasses import replace

    pk = key_params(make_codec("q8_0", 128, seed=7, keys=True), DEV)
    r, _ = torch.linalg.qr(torch.randn(128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    dense = replace(pk, rot=r.float().to(DEV))
    assert dense.plus_minus_one() is None
    q = torch.randn(1, 4, 1, 128, generator=torch.Generator().manual_seed(2))
    got = q8_queries(q.to(DEV), dense, 1, 0.5).cpu().double().view(1, 1, 16, 128)
    want = (q.double().reshape(1, 1, 4, 128) @ r * 0.5 * math.log2(math.e))[..., cuda_decode.kernel_dim_order(128, "q8_0")]
    assert (got[:, :, :4] - want).abs().max() <= 2e-3 * want.abs().max() and "_qmat" not in dense.__dict__


def test_cuda_backend_refuses_what_it_does_not_cover():
    tk, tv = TurboQuant("turbo2", 128, seed=1), TurboQuant("turbo3", 128, seed=2)
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


def _codecs(kv: str, D: int, seed: int):
    """(K codec, V codec) of a "K/V" setting; q8_0 keys through the cache's own codec factory."""
    kspec, vspec = kv.split("/")
    k = make_codec(kspec, D, seed=seed, keys=True) if kspec.startswith("q8_0") else \
        TurboQuant(kspec, D, norm_correction=True, seed=seed)
    return k, TurboQuant(vspec, D, norm_correction=True, seed=seed + 1)


SETTINGS = ["turbo3/turbo3", "turbo4/turbo4", "q8_0/turbo3", "q8_0/turbo4", "q8_0:rot/turbo3", "turbo4/turbo3"]


@gpu
@pytest.mark.parametrize("kv", SETTINGS)
@pytest.mark.parametrize("B,Hq,Hkv,D,T,splits", [
    (1, 32, 2, 256, 1000, None),   # Qwen3.5-122B layer: 16 query rows per KV head, a tail step
    (2, 24, 4, 256, 333, 3),       # Qwen3.5-27B: 6 rows (padded), splits ending mid-step
    (3, 32, 8, 128, 4100, None),   # Llama-3.1-8B-like: 4 rows, head_dim 128
    (1, 8, 8, 128, 17, 2),         # MHA, one full step and one token
])
def test_cuda_kernel_matches_reference(kv, B, Hq, Hkv, D, T, splits):
    g = torch.Generator().manual_seed(T)
    kc, vc = _codecs(kv, D, T)
    k = torch.randn(B, Hkv, T, D, generator=g) * 1.5
    v = torch.randn(B, Hkv, T, D, generator=g)
    q = torch.randn(B, Hq, 1, D, generator=g) * 2
    kp, vp = kc.quantize(k), vc.quantize(v)
    ref = reference.decode_attention(q.double(), kp, vp, kc, vc)
    out = turbo_decode_attention(q.cuda(), kp.cuda(), vp.cuda(), key_params(kc, "cuda"), turbo_params(vc, "cuda"),
                                 splits=splits, backend="cuda").cpu()
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() / ref.abs().max() <= ATTN_TOL
    if kv.startswith("q8_0") and D == 128:  # the Triton path for q8_0 keys, compiled
        out = turbo_decode_attention(q.cuda(), kp.cuda(), vp.cuda(), key_params(kc, "cuda"), turbo_params(vc, "cuda"),
                                     splits=splits, backend="triton").cpu()
        assert (out.double() - ref).abs().max() / ref.abs().max() <= ATTN_TOL


@gpu
@pytest.mark.parametrize("kv", SETTINGS)
def test_the_cache_entry_points_reach_the_cuda_kernel(monkeypatch, kv):
    """What the cache calls (`kernels.supports`, then `kernels.decode_attention` on codecs) launches the CUDA
    kernel once per decode step, for every setting it takes; q8_0 keys are stored by the fused Triton store."""
    kc, vc = _codecs(kv, 128, 1)
    assert kernels.supports(kc.spec, vc.spec, 128, "cuda") == kernels.KernelSupport("triton", "triton", "cuda")
    launches = []
    orig = cuda_decode.stage1
    monkeypatch.setattr(cuda_decode, "stage1", lambda *a, **k: launches.append(a[0].shape) or orig(*a, **k))
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 8, 1, 128, generator=g)
    k, v = torch.randn(2, 2, 300, 128, generator=g), torch.randn(2, 2, 300, 128, generator=g)
    kp, vp = kernels.store(kc, k.cuda()), kernels.store(vc, v.cuda())
    if kv.startswith("q8_0"):  # the device's q8_0 bytes: gguf's, up to float32 ties after a rotation on the GPU
        exact = key_params(kc, "cuda").rot is None
        assert (kp.cpu() != kc.quantize(k)).float().mean() <= (0 if exact else 1e-3)
    out = kernels.decode_attention(q.cuda(), kp, vp, kc, vc).cpu()
    assert len(launches) == 1
    ref = reference.decode_attention(q.double(), kp.cpu(), vp.cpu(), kc, vc)
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


def test_the_unpack_ceiling_experiment_changes_only_turbo_unit():
    """benchmarks/decode_unpack_ceiling.py swaps one function of the kernel source by its text: if the source
    moves, the swap must fail loudly rather than time something else."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import decode_unpack_ceiling as ceiling
    finally:
        sys.path.pop(0)
    shipped = cuda_decode.SOURCE
    variant = ceiling.variant_source()
    assert cuda_decode.SOURCE == shipped and "EXPERIMENT" in variant and "EXPERIMENT" not in shipped
    head = shipped.index("template <int F>\n__device__ __forceinline__ void turbo_unit(")
    tail = shipped.index("// Unit i (16 values) of lane c")
    assert "spread8" in shipped[head:tail] and "spread8" not in variant[head:variant.index("// Unit i (16 values)")]
    assert variant[:head] == shipped[:head] and variant.endswith(shipped[tail:])
