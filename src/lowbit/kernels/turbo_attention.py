"""Split-KV decode attention (flash-decoding) over a packed TurboQuant K/V cache, in Triton.

Nothing dequantized goes to memory. Per (batch, KV head, split) program:
- the query rows of all query heads of the KV head (GQA: GROUP heads x LQ new tokens, padded to M >= 16
  for the tensor cores) are rotated once by K's rotation (q·k = norm·(q Rᵀ)·c[idx] per 128-block);
- per tile of BLOCK_N tokens, K's packed indices are unpacked (every 8 codes fill exactly `bits` bytes,
  so 3-bit codes cost 3 byte loads per 8 codes and no straddle logic), looked up in the fp16 codebook,
  scaled by the block's fp16 norm into an fp16 tile in registers, and one tensor-core dot scores all
  M rows against it: the unpack is paid once per KV head, not once per query head;
- online softmax (base 2), then the same for V: P @ (norm_v·c_v[idx]) accumulates in V's rotated frame.
A second kernel, one program per (KV head, query row, 128-block), merges the splits and applies V's inverse
rotation once per output row.

Precision: dot operands are fp16 (codebook values, norms and rotated queries), accumulation float32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.kernels import _interpret

from lowbit.errors import LowbitError
from lowbit.kernels.params import MAX_ROWS, TurboParams

_interpret.apply()

_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": keeps fully masked rows NaN-free


@triton.jit
def hadamard_tile(BLK: tl.constexpr):
    """The Sylvester Hadamard matrix H[i, j] = (-1)^popcount(i & j), BLK <= 256, built in registers."""
    i = tl.arange(0, BLK)
    v = i[:, None] & i[None, :]
    v = v ^ (v >> 4)
    v = v ^ (v >> 2)
    v = v ^ (v >> 1)
    return tl.where((v & 1) == 1, -1.0, 1.0)


@triton.jit
def load_raw(P, row_off, tmask, BITS: tl.constexpr, BB: tl.constexpr, BLK: tl.constexpr, NBLK: tl.constexpr):
    """Packed bytes of the tokens at byte offsets row_off: index words [BLOCK_N, NBLK, BLK/8] (8 codes each)
    and fp16 norm bits [BLOCK_N, NBLK]. Split from `decode_raw` so the next tile's loads can be in flight
    while this one is decoded."""
    G: tl.constexpr = BLK // 8
    j = tl.arange(0, NBLK)
    gi = tl.arange(0, G)
    off = row_off[:, None, None] + j[None, :, None] * BB + gi[None, None, :] * BITS
    m3 = tmask[:, None, None]
    word = tl.load(P + off, mask=m3, other=0).to(tl.int32)
    for i in tl.static_range(1, BITS):
        word = word | (tl.load(P + off + i, mask=m3, other=0).to(tl.int32) << (8 * i))
    noff = row_off[:, None] + j[None, :] * BB + BLK * BITS // 8
    m2 = tmask[:, None]
    n16 = tl.load(P + noff, mask=m2, other=0).to(tl.int32) | (tl.load(P + noff + 1, mask=m2, other=0).to(tl.int32) << 8)
    return word, n16


@triton.jit
def decode_raw(word, n16, C, BITS: tl.constexpr, BLK: tl.constexpr, NBLK: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_N, NBLK*BLK] fp16 values norm·c[idx] (rotated frame)."""
    shifts = tl.arange(0, 8) * BITS
    codes = (word[:, :, :, None] >> shifts[None, None, None, :]) & ((1 << BITS) - 1)
    vals = tl.load(C + codes)  # fp16 codebook, L1-resident (selects instead measured 3-5x slower)
    norm = n16.to(tl.int16).to(tl.float16, bitcast=True)
    vals = vals * norm[:, :, None, None]
    return tl.reshape(vals, [BLOCK_N, NBLK * BLK])


@triton.jit
def dequant_tile(P, row_off, tmask, C, BITS: tl.constexpr, BB: tl.constexpr, BLK: tl.constexpr,
                 NBLK: tl.constexpr, BLOCK_N: tl.constexpr):
    word, n16 = load_raw(P, row_off, tmask, BITS, BB, BLK, NBLK)
    return decode_raw(word, n16, C, BITS, BLK, NBLK, BLOCK_N)


@triton.jit
def _stage1(Q, K, V, RKT, SK, CK, CV, OP, ML, T, split_len,
            sqb, sqh, sql, skb, skh, skt, svb, svh, svt, qk_scale,
            HKV: tl.constexpr, GROUP: tl.constexpr, LQ: tl.constexpr, M: tl.constexpr,
            BLK: tl.constexpr, NBLK: tl.constexpr, KBITS: tl.constexpr, VBITS: tl.constexpr,
            KBB: tl.constexpr, VBB: tl.constexpr, BLOCK_N: tl.constexpr, HADAMARD: tl.constexpr, NSPLIT):
    D: tl.constexpr = NBLK * BLK
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    rows = tl.arange(0, M)
    rvalid = rows < GROUP * LQ
    g = rows // LQ
    t = rows % LQ
    dcol = tl.arange(0, D)
    q = tl.load(Q + b * sqb + (h * GROUP + g)[:, None] * sqh + t[:, None] * sql + dcol[None, :],
                mask=rvalid[:, None], other=0.0).to(tl.float32)
    # Rotate each 128-block of every row: [M, D] -> [M*NBLK, BLK] rows, one dot with Rᵀ, and back.
    bc = tl.arange(0, BLK)
    qb = tl.reshape(q * qk_scale, [M * NBLK, BLK])
    if HADAMARD:  # q Rᵀ = ((q∘s) H) / sqrt(BLK): H (±1) from registers, no matrix load
        qb = qb * tl.load(SK + bc)[None, :] * (1.0 / tl.sqrt(BLK * 1.0))
        qr = tl.dot(qb.to(tl.float16), hadamard_tile(BLK).to(tl.float16))
    else:
        qr = tl.dot(qb.to(tl.float16), tl.load(RKT + bc[:, None] * BLK + bc[None, :]))  # fp16 Rᵀ
    qr = tl.reshape(qr, [M, D]).to(tl.float16)

    start = sp * split_len
    end = tl.minimum(start + split_len, T)
    last = T - LQ + t  # causal: query row t sees keys 0..last
    m_i = tl.full([M], _NEG, dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    acc = tl.zeros([M, D], dtype=tl.float32)
    kbase = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    vbase = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    offs = start + tl.arange(0, BLOCK_N)
    kw, kn = load_raw(kbase, offs.to(tl.int64) * skt, offs < end, KBITS, KBB, BLK, NBLK)
    vw, vn = load_raw(vbase, offs.to(tl.int64) * svt, offs < end, VBITS, VBB, BLK, NBLK)
    for n0 in range(0, split_len, BLOCK_N):  # tiles past T are fully masked (only in the last split)
        offs = start + n0 + tl.arange(0, BLOCK_N)
        tmask = offs < end
        # Prefetch: the next tile's bytes are loading while this one is decoded and multiplied.
        nxt = offs + BLOCK_N
        nmask = nxt < end
        kw2, kn2 = load_raw(kbase, nxt.to(tl.int64) * skt, nmask, KBITS, KBB, BLK, NBLK)
        vw2, vn2 = load_raw(vbase, nxt.to(tl.int64) * svt, nmask, VBITS, VBB, BLK, NBLK)
        kt = decode_raw(kw, kn, CK, KBITS, BLK, NBLK, BLOCK_N)
        s = tl.dot(qr, tl.trans(kt))
        ok = tmask[None, :] & (offs[None, :] <= last[:, None])
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = decode_raw(vw, vn, CV, VBITS, BLK, NBLK, BLOCK_N)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vt)
        m_i = m_new
        kw, kn, vw, vn = kw2, kn2, vw2, vn2
    base = bh * NSPLIT + sp
    tl.store(OP + base.to(tl.int64) * (M * D) + rows[:, None] * D + dcol[None, :], acc, mask=rvalid[:, None])
    tl.store(ML + base * (2 * M) + rows, m_i, mask=rvalid)
    tl.store(ML + base * (2 * M) + M + rows, l_i, mask=rvalid)


@triton.jit
def _stage2(OP, ML, RV, SV, O, sob, soh, sol,
            HKV: tl.constexpr, GROUP: tl.constexpr, LQ: tl.constexpr, M: tl.constexpr,
            BLK: tl.constexpr, NBLK: tl.constexpr, HADAMARD: tl.constexpr, SC: tl.constexpr, NSPLIT):
    """One program per (batch x KV head, query row, 128-block): merge the splits, rotate back, store."""
    D: tl.constexpr = NBLK * BLK
    bh = tl.program_id(0)
    r = tl.program_id(1)
    j = tl.program_id(2)
    b = bh // HKV
    h = bh % HKV
    sc = tl.arange(0, SC)
    bc = tl.arange(0, BLK)
    mx = tl.full([SC], _NEG, dtype=tl.float32)
    for s0 in range(0, NSPLIT, SC):
        sp = s0 + sc
        mx = tl.maximum(mx, tl.load(ML + (bh * NSPLIT + sp) * (2 * M) + r, mask=sp < NSPLIT, other=_NEG))
    m = tl.max(mx, axis=0)
    acc = tl.zeros([BLK], dtype=tl.float32)
    lsum = tl.zeros([SC], dtype=tl.float32)
    for s0 in range(0, NSPLIT, SC):
        sp = s0 + sc
        ok = sp < NSPLIT
        base = (bh * NSPLIT + sp).to(tl.int64)
        w = tl.math.exp2(tl.load(ML + base * (2 * M) + r, mask=ok, other=_NEG) - m)
        lsum += w * tl.load(ML + base * (2 * M) + M + r, mask=ok, other=0.0)
        o = tl.load(OP + base[:, None] * (M * D) + r * D + j * BLK + bc[None, :], mask=ok[:, None], other=0.0)
        acc += tl.sum(o * w[:, None], axis=0)
    y = acc / tl.sum(lsum, axis=0)
    g = r // LQ
    t = r % LQ
    obase = O + b * sob + (h * GROUP + g) * soh + t * sol + j * BLK
    CC: tl.constexpr = 32
    for c0 in tl.static_range(0, BLK, CC):  # x = y R, 32 output columns at a time
        cols = c0 + tl.arange(0, CC)
        if HADAMARD:  # R = H diag(s) / sqrt(BLK), H[i, c] = (-1)^popcount(i & c)
            v = bc[:, None] & cols[None, :]
            v = v ^ (v >> 4)
            v = v ^ (v >> 2)
            v = v ^ (v >> 1)
            x = tl.sum(tl.where((v & 1) == 1, -y[:, None], y[:, None]), axis=0)
            x = x * tl.load(SV + cols) * (1.0 / tl.sqrt(BLK * 1.0))
        else:
            x = tl.sum(y[:, None] * tl.load(RV + bc[:, None] * BLK + cols[None, :]), axis=0)
        tl.store(obase + cols, x.to(O.dtype.element_ty))


def _cached(p: TurboParams, name: str, make):
    """Derived device tensors, made once per params (never inside a CUDA-graph capture after the first call)."""
    if name not in p.__dict__:
        p.__dict__[name] = make()
    return p.__dict__[name]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def default_config(batch: int, kv_heads: int, seq_len: int, head_dim: int, sms: int = 132) -> tuple[int, int, int]:
    """(BLOCK_N, splits, num_warps): enough programs to fill the GPU twice, each split whole tiles."""
    block_n, warps = (32, 8) if head_dim >= 256 else (64, 4)
    tiles = max(1, math.ceil(seq_len / block_n))
    splits = max(1, min(tiles, math.ceil(2 * sms / (batch * kv_heads))))
    return block_n, splits, warps


def turbo_decode_attention(q: torch.Tensor, k_packed: torch.Tensor, v_packed: torch.Tensor,
                           pk: TurboParams, pv: TurboParams, scale: float | None = None,
                           seq_len: int | None = None, block_n: int | None = None, splits: int | None = None,
                           num_warps: int | None = None) -> torch.Tensor:
    """softmax(q kᵀ·scale) v for q [B, Hq, LQ, D] over packed K/V [B, Hkv, >=T, bytes]; the LQ new tokens
    are the last LQ of the T cached ones (causal). Returns [B, Hq, LQ, D] in q's dtype."""
    B, Hq, LQ, D = q.shape
    Bk, HKV, cap, vbk = k_packed.shape
    T = cap if seq_len is None else seq_len
    if pk.head_dim != D or pv.head_dim != D or pk.block != pv.block:
        raise LowbitError(f"K/V formats and queries disagree on head_dim ({pk.head_dim}, {pv.head_dim}, {D})")
    if Hq % HKV or Bk != B or v_packed.shape[:2] != (B, HKV) or vbk != pk.vector_bytes \
            or v_packed.shape[-1] != pv.vector_bytes or T > min(cap, v_packed.shape[2]) or T < LQ:
        raise LowbitError(f"packed K {tuple(k_packed.shape)} / V {tuple(v_packed.shape)} do not fit q {tuple(q.shape)}")
    group = Hq // HKV
    if group * LQ > MAX_ROWS:
        raise LowbitError(f"{group * LQ} query rows per KV head is prefill; decode kernel takes at most {MAX_ROWS}")
    if k_packed.stride(-1) != 1 or v_packed.stride(-1) != 1 or q.stride(-1) != 1:
        raise LowbitError("packed K/V and q need a contiguous last dimension")
    M = max(16, _pow2(group * LQ))
    bn, sp, nw = default_config(B, HKV, T, D)
    block_n, splits, num_warps = block_n or bn, splits or sp, num_warps or nw
    split_len = math.ceil(math.ceil(T / splits) / block_n) * block_n
    splits = math.ceil(T / split_len)
    scale = D ** -0.5 if scale is None else scale
    dev = q.device
    rkt = _cached(pk, "_rkt16", lambda: pk.rot.t().contiguous().to(torch.float16))
    ck = _cached(pk, "_c16", lambda: pk.centroids.to(torch.float16))
    cv = _cached(pv, "_c16", lambda: pv.centroids.to(torch.float16))
    op = torch.empty(B * HKV * splits * M * D, dtype=torch.float32, device=dev)
    ml = torch.empty(B * HKV * splits * 2 * M, dtype=torch.float32, device=dev)
    out = torch.empty_like(q)
    _stage1[(B * HKV, splits)](
        q, k_packed, v_packed, rkt, pk.signs if pk.hadamard else ck, ck, cv, op, ml, T, split_len,
        q.stride(0), q.stride(1), q.stride(2), k_packed.stride(0), k_packed.stride(1), k_packed.stride(2),
        v_packed.stride(0), v_packed.stride(1), v_packed.stride(2), scale * math.log2(math.e),
        HKV=HKV, GROUP=group, LQ=LQ, M=M, BLK=pk.block, NBLK=pk.n_blocks, KBITS=pk.bits, VBITS=pv.bits,
        KBB=pk.block_bytes, VBB=pv.block_bytes, BLOCK_N=block_n, HADAMARD=pk.hadamard, NSPLIT=splits,
        num_warps=num_warps,
    )
    _stage2[(B * HKV, group * LQ, pk.n_blocks)](
        op, ml, pv.rot, pv.signs if pv.hadamard else pv.rot, out, out.stride(0), out.stride(1), out.stride(2),
        HKV=HKV, GROUP=group, LQ=LQ, M=M, BLK=pk.block, NBLK=pk.n_blocks, HADAMARD=pv.hadamard, SC=16,
        NSPLIT=splits, num_warps=4,
    )
    return out


@triton.jit
def _dequant_kernel(P, R, S, C, O, T, spb, sph, spt, sob, soh, sot, H: tl.constexpr, BITS: tl.constexpr,
                    BB: tl.constexpr, BLK: tl.constexpr, NBLK: tl.constexpr, BLOCK_N: tl.constexpr,
                    HADAMARD: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    tmask = offs < T
    offs64 = offs.to(tl.int64)
    y = dequant_tile(P + b.to(tl.int64) * spb + h.to(tl.int64) * sph, offs64 * spt, tmask, C, BITS, BB, BLK, NBLK,
                     BLOCK_N)
    bc = tl.arange(0, BLK)
    yb = tl.reshape(y, [BLOCK_N * NBLK, BLK])
    if HADAMARD:
        xb = tl.dot(yb, hadamard_tile(BLK).to(tl.float16)) * tl.load(S + bc)[None, :] * (1.0 / tl.sqrt(BLK * 1.0))
    else:
        xb = tl.dot(yb, tl.load(R + bc[:, None] * BLK + bc[None, :]))  # fp16 R: x = y @ R
    x = tl.reshape(xb, [BLOCK_N, NBLK * BLK])
    d = tl.arange(0, NBLK * BLK)
    tl.store(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs64[:, None] * sot + d[None, :],
             x.to(O.dtype.element_ty), mask=tmask[:, None])


def turbo_dequantize(p: TurboParams, packed: torch.Tensor, dtype=torch.bfloat16, seq_len: int | None = None,
                     block_n: int = 64) -> torch.Tensor:
    """Packed [B, H, T, bytes] -> dense [B, H, T, head_dim] in the original frame (fp16 products, float32
    sums): the dequantize-then-attend baseline and the cache's dense path (prefill)."""
    B, H, cap, nb = packed.shape
    T = cap if seq_len is None else seq_len
    if nb != p.vector_bytes or packed.stride(-1) != 1:
        raise LowbitError(f"packed tensor {tuple(packed.shape)} is not {p.vector_bytes}-byte vectors")
    out = torch.empty(B, H, T, p.head_dim, dtype=dtype, device=packed.device)
    if T == 0 or B * H == 0:
        return out
    r16 = _cached(p, "_r16", lambda: p.rot.to(torch.float16).contiguous())
    c16 = _cached(p, "_c16", lambda: p.centroids.to(torch.float16))
    _dequant_kernel[(B * H, triton.cdiv(T, block_n))](
        packed, r16, p.signs if p.hadamard else c16, c16, out, T, packed.stride(0), packed.stride(1), packed.stride(2),
        out.stride(0), out.stride(1), out.stride(2), H=H, BITS=p.bits, BB=p.block_bytes, BLK=p.block,
        NBLK=p.n_blocks, BLOCK_N=block_n, HADAMARD=p.hadamard, num_warps=8,
    )
    return out
