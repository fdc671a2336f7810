"""Split-KV decode attention (flash-decoding) over a packed TurboQuant K/V cache, in Triton.

Nothing dequantized goes to memory. Per (batch, KV head, split) program:
- the query rows of all query heads of the KV head (GQA: GROUP heads x LQ new tokens, padded to M >= 16
  for the tensor cores) are rotated once by K's rotation (q·k = norm·(q Rᵀ)·c[idx] per 128-block);
- per tile of BLOCK_N tokens, K's packed 16-bit words are unpacked in registers into fp16 codebook values
  (`lowbit.kernels.unpack`: PTX `prmt` lookups, no per-value memory access), one tensor-core dot per half of
  the head scores all M rows against them, and the fp16 norms scale the M x BLOCK_N scores (per 128-block):
  the unpack is paid once per KV head, not once per query head;
- online softmax (base 2), then the same for V: (P∘norm_v) @ c_v accumulates in V's rotated frame.
A second kernel, one program per (KV head, query row, 128-block), merges the splits and applies V's inverse
rotation once per output row.

Precision: dot operands are fp16 (codebook values, rotated queries, P∘norm), accumulation float32.

q8_0 keys (ggml blocks of 32 int8 and an fp16 scale, in the frame the codec rotated them to): the queries are
rotated the same way once, outside the kernel (`Q8Params.rotate`), and stage 1 dequantizes each key tile to
fp16 (int8 times its block's scale) for one dot over the whole head.

`turbo_decode_attention` sends decoding to the CUDA split kernel (`cuda_decode`: stage 1 in CUDA, after
`rotate_queries` or `q8_queries`; this file's stage 2 merges) where it applies (K turbo3, turbo4 or q8_0 with V
turbo3 or turbo4), and runs the Triton stage 1 here otherwise (docs/kernels.md: the CUDA kernel is 1.1-2.4x
faster on an H100).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.kernels import _interpret, cuda_decode

from lowbit.errors import LowbitError
from lowbit.kernels.params import MAX_ROWS, Q8Params, TurboParams, cached, sm_count
from lowbit.kernels.unpack import USE_ASM, load_units, norm_f32, table_words, unit_values
from lowbit.quant.rotation import sylvester_hadamard

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
def dequant_tile(P16, row16, tmask, C, L0, L1, L2, L3, H0, H1, H2, H3, BITS: tl.constexpr, BB2: tl.constexpr,
                 BLK: tl.constexpr, NBLK: tl.constexpr, BLOCK_N: tl.constexpr, ASM_: tl.constexpr):
    """[BLOCK_N, NBLK, BLK] fp16 codebook values and [BLOCK_N, NBLK] float32 norms of a tile of tokens."""
    w0, w1, w2, w3, n16 = load_units(P16, row16, tmask, BITS, BB2, BLK, NBLK)
    c = unit_values(w0, w1, w2, w3, C, L0, L1, L2, L3, H0, H1, H2, H3, BITS, ASM_)
    return tl.reshape(c, [BLOCK_N, NBLK, BLK]), norm_f32(n16)


@triton.jit
def _halves(x, D: tl.constexpr):
    """A row tile of head vectors (any shape with D values per row) -> its first and second halves [R, D/2]:
    the two 128-blocks when D = 256. A split (not a reshape to [R, D]) lets Triton keep 8 consecutive values
    per thread for 16-byte shared stores (measured in the SASS: a plain reshape stored 2 bytes at a time)."""
    return tl.split(tl.permute(tl.reshape(x, [x.shape[0], 2, D // 2]), (0, 2, 1)))


@triton.jit
def _norms(n, NBLK: tl.constexpr):
    """[N, NBLK] norms -> one [N] tensor per block (the second is the first when NBLK == 1)."""
    if NBLK == 1:
        n1 = tl.reshape(n, [n.shape[0]])
        return n1, n1
    else:
        return tl.split(n)


@triton.jit
def _q8_tile(P8, row8, tmask, D: tl.constexpr):
    """[N, D] fp16 keys (int8 times the block's fp16 scale, rounded once) of a tile of q8_0 vectors starting at
    byte offsets row8 [N]; the scale's two bytes are read one by one (blocks are only 2-byte aligned)."""
    d = tl.arange(0, D)
    blk = (d // 32) * 34
    m = tmask[:, None]
    v = tl.load(P8 + row8[:, None] + (blk + 2 + d % 32)[None, :], mask=m, other=0).to(tl.int8, bitcast=True)
    lo = tl.load(P8 + row8[:, None] + blk[None, :], mask=m, other=0).to(tl.int32)
    hi = tl.load(P8 + row8[:, None] + (blk + 1)[None, :], mask=m, other=0).to(tl.int32)
    scale = (lo | (hi << 8)).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return (v.to(tl.float32) * scale).to(tl.float16)


@triton.jit
def _stage1(Q, K, V, RKT, SK, CK, CV, OP, ML, T, split_len,
            sqb, sqh, sql, skb, skh, skt, svb, svh, svt, qk_scale,
            KL0, KL1, KL2, KL3, KH0, KH1, KH2, KH3, VL0, VL1, VL2, VL3, VH0, VH1, VH2, VH3,
            HKV: tl.constexpr, GROUP: tl.constexpr, LQ: tl.constexpr, M: tl.constexpr,
            BLK: tl.constexpr, NBLK: tl.constexpr, KBITS: tl.constexpr, VBITS: tl.constexpr,
            KBB2: tl.constexpr, VBB2: tl.constexpr, BLOCK_N: tl.constexpr, HADAMARD: tl.constexpr,
            ASM_: tl.constexpr, PREFETCH: tl.constexpr, KQ8: tl.constexpr, NSPLIT):
    """K, V: the packed caches as 16-bit words (strides in words). NBLK (128-blocks per head) is 1 or 2.
    Per block j the score is norm_j · (q_j · c_j): the codebook values go to the tensor cores as they are and
    the norms scale M x BLOCK_N scores (and P for V), not every value.
    KQ8: K is q8_0 bytes (strides in bytes) and Q is already in K's frame (no rotation here)."""
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
    if KQ8:
        qq = (q * qk_scale).to(tl.float16)
    else:
        # Rotate each 128-block of every row: [M, D] -> [M*NBLK, BLK] rows, one dot with Rᵀ, and back.
        bc = tl.arange(0, BLK)
        qb = tl.reshape(q * qk_scale, [M * NBLK, BLK])
        if HADAMARD:  # q Rᵀ = ((q∘s) H) / sqrt(BLK): H (±1) from registers, no matrix load
            qb = qb * tl.load(SK + bc)[None, :] * (1.0 / tl.sqrt(BLK * 1.0))
            qr = tl.dot(qb.to(tl.float16), hadamard_tile(BLK).to(tl.float16))
        else:
            qr = tl.dot(qb.to(tl.float16), tl.load(RKT + bc[:, None] * BLK + bc[None, :]))  # fp16 Rᵀ
        q0, q1 = _halves(tl.reshape(qr.to(tl.float16), [M, D]), D)

    start = sp * split_len
    end = tl.minimum(start + split_len, T)
    last = T - LQ + t  # causal: query row t sees keys 0..last
    m_i = tl.full([M], _NEG, dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    HALF: tl.constexpr = D // 2
    acc0 = tl.zeros([M, HALF], dtype=tl.float32)
    acc1 = tl.zeros([M, HALF], dtype=tl.float32)
    # 32-bit offsets inside one (batch, KV head); the tile's first token moves the base pointer.
    tok = tl.arange(0, BLOCK_N)
    kbase = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh + start.to(tl.int64) * skt
    vbase = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh + start.to(tl.int64) * svt
    n_here = end - start
    if PREFETCH:
        kw0, kw1, kw2, kw3, kn = load_units(kbase, tok * skt, tok < n_here, KBITS, KBB2, BLK, NBLK)
        vw0, vw1, vw2, vw3, vn = load_units(vbase, tok * svt, tok < n_here, VBITS, VBB2, BLK, NBLK)
    for n0 in range(0, split_len, BLOCK_N):  # tiles past T are fully masked (only in the last split)
        offs = start + n0 + tok
        tmask = offs < end
        if PREFETCH:  # the next tile's words load while this one is decoded and multiplied
            kbase += BLOCK_N * skt
            vbase += BLOCK_N * svt
            nmask = (n0 + BLOCK_N + tok) < n_here
            kx0, kx1, kx2, kx3, kn2 = load_units(kbase, tok * skt, nmask, KBITS, KBB2, BLK, NBLK)
            vx0, vx1, vx2, vx3, vn2 = load_units(vbase, tok * svt, nmask, VBITS, VBB2, BLK, NBLK)
        else:
            if KQ8:
                s = tl.dot(qq, tl.trans(_q8_tile(kbase, tok * skt, tmask, D)))
            else:
                kw0, kw1, kw2, kw3, kn = load_units(kbase, tok * skt, tmask, KBITS, KBB2, BLK, NBLK)
            vw0, vw1, vw2, vw3, vn = load_units(vbase, tok * svt, tmask, VBITS, VBB2, BLK, NBLK)
            kbase += BLOCK_N * skt
            vbase += BLOCK_N * svt
        if not KQ8:
            kc0, kc1 = _halves(unit_values(kw0, kw1, kw2, kw3, CK, KL0, KL1, KL2, KL3, KH0, KH1, KH2, KH3, KBITS,
                                           ASM_), D)
            kn0, kn1 = _norms(norm_f32(kn), NBLK)
            if NBLK == 2:
                s = tl.dot(q0, tl.trans(kc0)) * kn0[None, :] + tl.dot(q1, tl.trans(kc1)) * kn1[None, :]
            else:
                s = tl.dot(q1, tl.trans(kc1), acc=tl.dot(q0, tl.trans(kc0))) * kn0[None, :]
        ok = tmask[None, :] & (offs[None, :] <= last[:, None])
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vc0, vc1 = _halves(unit_values(vw0, vw1, vw2, vw3, CV, VL0, VL1, VL2, VL3, VH0, VH1, VH2, VH3, VBITS, ASM_), D)
        vn0, vn1 = _norms(norm_f32(vn), NBLK)
        acc0 = acc0 * alpha[:, None] + tl.dot((p * vn0[None, :]).to(tl.float16), vc0)
        acc1 = acc1 * alpha[:, None] + tl.dot((p * vn1[None, :]).to(tl.float16), vc1)
        m_i = m_new
        if PREFETCH:
            kw0, kw1, kw2, kw3, kn = kx0, kx1, kx2, kx3, kn2
            vw0, vw1, vw2, vw3, vn = vx0, vx1, vx2, vx3, vn2
    base = bh * NSPLIT + sp
    optr = OP + base.to(tl.int64) * (M * D) + rows[:, None] * D + tl.arange(0, HALF)[None, :]
    tl.store(optr, acc0, mask=rvalid[:, None])
    tl.store(optr + HALF, acc1, mask=rvalid[:, None])
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


@triton.jit
def _rotate_queries(Q, MAT, SK, QK, sqb, sqh, sql, qk_scale, post, HKV: tl.constexpr, GROUP: tl.constexpr,
                    LQ: tl.constexpr, BLK: tl.constexpr, NBLK: tl.constexpr, SIGNS: tl.constexpr, CW: tl.constexpr):
    """QK[bh, r, :] = the rotated, scaled query row r (= head·LQ + token) of KV head bh in the CUDA kernel's
    dimension order: per BLK-block j, (q_j · SK) @ MAT · post, MAT the rotation with its columns permuted (fp16),
    CW output columns at a time; rows past GROUP·LQ are zero. A ±1 MAT (Hadamard: TurboQuant's with its signs
    SK, llama.cpp's without) is exact in fp16, its scale `post` applied in float32."""
    bh = tl.program_id(0)
    b = bh // HKV
    h = bh % HKV
    rows = tl.arange(0, 16)
    ok = rows < GROUP * LQ
    g = rows // LQ
    t = rows % LQ
    bc = tl.arange(0, BLK)
    cw = tl.arange(0, CW)
    for j in tl.static_range(NBLK):
        q = tl.load(Q + b * sqb + (h * GROUP + g)[:, None] * sqh + t[:, None] * sql + j * BLK + bc[None, :],
                    mask=ok[:, None], other=0.0).to(tl.float32) * qk_scale
        if SIGNS:
            q = q * tl.load(SK + bc)[None, :]
        qh = q.to(tl.float16)
        for c in tl.static_range(BLK // CW):
            y = tl.dot(qh, tl.load(MAT + bc[:, None] * BLK + c * CW + cw[None, :])) * post
            tl.store(QK + bh * (16 * NBLK * BLK) + rows[:, None] * (NBLK * BLK) + j * BLK + c * CW + cw[None, :],
                     y.to(tl.float16))


def _launch_rotation(q, mat, signs, HKV: int, scale: float, post: float, block: int) -> torch.Tensor:
    B, Hq, LQ, D = q.shape
    out = torch.empty(B * HKV, 16, D, device=q.device, dtype=torch.float16)
    cw = min(block, 128)  # a [block, 128] fp16 slice of the matrix at a time: 256 x 256 would spill
    _rotate_queries[(B * HKV,)](q, mat, mat if signs is None else signs, out, q.stride(0), q.stride(1), q.stride(2),
                                scale * math.log2(math.e), post, HKV=HKV, GROUP=Hq // HKV, LQ=LQ, BLK=block,
                                NBLK=D // block, SIGNS=signs is not None, CW=cw, num_warps=4 if block <= 128 else 8)
    return out


def rotate_queries(q: torch.Tensor, pk: TurboParams, HKV: int, scale: float) -> torch.Tensor:
    """[B*HKV, 16, D] fp16 queries for `cuda_decode`: rotated by K's rotation, times scale·log2(e), in
    `cuda_decode.kernel_dim_order`, padded to 16 rows per KV head."""
    D = q.shape[-1]
    local = cuda_decode.kernel_dim_order(D)[: pk.block] % pk.block  # the same permutation inside every 128-block

    def make():
        base = sylvester_hadamard(pk.block).float() if pk.hadamard else pk.rot.float().cpu()  # rows: output dims
        return base[local.tolist()].t().contiguous().to(device=q.device, dtype=torch.float16)  # [d, kappa]

    mat = cached(pk, "_qmat", make)
    return _launch_rotation(q, mat, pk.signs if pk.hadamard else None, HKV, scale,
                            pk.block ** -0.5 if pk.hadamard else 1.0, pk.block)


def q8_queries(q: torch.Tensor, pk: Q8Params, HKV: int, scale: float) -> torch.Tensor:
    """[B*HKV, 16, D] fp16 queries for `cuda_decode` over q8_0 keys: in K's stored frame (`pk.rotate`), times
    scale·log2(e), in `kernel_dim_order(D, "q8_0")`, padded to 16 rows per KV head. One Triton launch where the
    rotation is none or one ±1 matrix over the whole head (llama.cpp's Hadamard for head dims 128 and 256),
    torch ops for any other (a seeded rotation)."""
    B, Hq, LQ, D = q.shape
    pm = pk.plus_minus_one()
    if pk.rot is None or (pm is not None and pk.rot_block == D):
        def make():  # column kappa of the matrix = storage dimension perm[kappa] of the rotation
            perm = cuda_decode.kernel_dim_order(D, "q8_0")
            base = torch.eye(D) if pk.rot is None else pm[0].cpu()
            return base[:, perm].contiguous().to(device=q.device, dtype=torch.float16)

        return _launch_rotation(q, cached(pk, "_qmat", make), None, HKV, scale, 1.0 if pm is None else pm[1], D)
    rows = Hq // HKV * LQ
    perm = cached(pk, "_perm", lambda: cuda_decode.kernel_dim_order(D, "q8_0").to(q.device))
    y = pk.rotate(q.reshape(B, HKV, rows, D)) * (scale * math.log2(math.e))
    out = torch.zeros(B, HKV, 16, D, device=q.device, dtype=torch.float16)
    out[:, :, :rows] = y[..., perm]
    return out.view(B * HKV, 16, D)


def _tables(p: TurboParams):
    """The fp16 codebook (interpreter path) and its 8 table words (PTX path), made once per params."""
    return (cached(p, "_c16", lambda: p.centroids.to(torch.float16)),
            cached(p, "_tabw", lambda: table_words(p.centroids)))


def _words(packed: torch.Tensor) -> torch.Tensor:
    """The packed bytes as 16-bit words (every vector and block is an even number of bytes)."""
    try:
        return packed.view(torch.int16)
    except RuntimeError:  # odd strides or offset: a copy (does not happen for caches the store kernel wrote)
        return packed.contiguous().view(torch.int16)


def merge_chunk(splits: int) -> int:
    """Splits the merge (stage 2) reads per iteration: up to 64, so that at batch 1, where few programs merge
    128+ splits each, a program has 32 KB of partials in flight instead of 8 (16 splits: 12 µs per Llama-3.1-8B
    layer on the H200, a third of the layer's attention; `decode_e2e.py --profile`)."""
    return max(16, min(64, _pow2(splits)))


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


PREFETCH = False  # measured in SASS: register prefetch adds moves and registers; occupancy hides latency instead


def default_config(batch: int, kv_heads: int, seq_len: int, head_dim: int, sms: int = 132) -> tuple[int, int, int]:
    """(BLOCK_N, splits, num_warps): about 4 programs per SM (2-3 fit at once), each split whole tiles.
    Tiles from the H100 sweep (docs/kernels.md): 128 tokens x 4 warps, except 64 for head_dim 256 with few
    (batch x KV head) rows."""
    block_n = 64 if head_dim >= 256 and batch * kv_heads <= 16 else 128
    warps = 4
    tiles = max(1, math.ceil(seq_len / block_n))
    splits = max(1, min(tiles, math.ceil(4 * sms / (batch * kv_heads))))
    return block_n, splits, warps


def _cuda_path(q, k_packed, v_packed, pk: TurboParams, pv: TurboParams, scale: float, T: int,
               splits: int | None) -> torch.Tensor:
    """Queries rotated once (Triton for turbo keys, torch for q8_0 keys), the CUDA split kernel, then the Triton
    merge (stage 2)."""
    B, Hq, LQ, D = q.shape
    HKV = k_packed.shape[1]
    if splits:
        split_len = math.ceil(math.ceil(T / splits) / 16) * 16
    else:
        split_len = cuda_decode.split_length(B * HKV, T, sm_count(str(q.device)))
    splits = math.ceil(T / split_len)
    kfmt = cuda_decode.key_format(pk)
    if kfmt == "q8_0":
        qk, ktab = q8_queries(q, pk, HKV, scale), (0,) * 8
    else:
        qk, ktab = rotate_queries(q, pk, HKV, scale), _tables(pk)[1]
    op = torch.empty(B * HKV * splits * 16 * D, dtype=torch.float32, device=q.device)
    ml = torch.empty(B * HKV * splits * 32, dtype=torch.float32, device=q.device)
    cuda_decode.stage1(qk, k_packed, v_packed, kfmt, f"turbo{pv.bits}", ktab, _tables(pv)[1], T, split_len, splits,
                       op, ml, rows=(Hq // HKV) * LQ)
    out = torch.empty_like(q)
    _stage2[(B * HKV, (Hq // HKV) * LQ, pv.n_blocks)](
        op, ml, pv.rot, pv.signs if pv.hadamard else pv.rot, out, out.stride(0), out.stride(1), out.stride(2),
        HKV=HKV, GROUP=Hq // HKV, LQ=LQ, M=16, BLK=pv.block, NBLK=pv.n_blocks, HADAMARD=pv.hadamard,
        SC=merge_chunk(splits),
        NSPLIT=splits, num_warps=4,
    )
    return out


def turbo_decode_attention(q: torch.Tensor, k_packed: torch.Tensor, v_packed: torch.Tensor,
                           pk: TurboParams | Q8Params, pv: TurboParams, scale: float | None = None,
                           seq_len: int | None = None, block_n: int | None = None, splits: int | None = None,
                           num_warps: int | None = None, prefetch: bool | None = None,
                           backend: str = "auto") -> torch.Tensor:
    """softmax(q kᵀ·scale) v for q [B, Hq, LQ, D] over packed K/V [B, Hkv, >=T, bytes]; the LQ new tokens
    are the last LQ of the T cached ones (causal). Returns [B, Hq, LQ, D] in q's dtype.

    pk: a TurboQuant key codec's parameters (`turbo_params`) or q8_0's (`q8_params`); pv: TurboQuant's.
    backend: "auto" takes the CUDA split kernel (`cuda_decode`) where it applies (K turbo3/turbo4/q8_0, V
    turbo3/turbo4, head_dim 128 or 256, one new token, NVRTC present) and the Triton kernel elsewhere;
    "triton" or "cuda" force one (the latter raises where it does not apply)."""
    B, Hq, LQ, D = q.shape
    Bk, HKV, cap, vbk = k_packed.shape
    T = cap if seq_len is None else seq_len
    kq8 = isinstance(pk, Q8Params)
    if pk.head_dim != D or pv.head_dim != D or (not kq8 and pk.block != pv.block):
        raise LowbitError(f"K/V formats and queries disagree on head_dim ({pk.head_dim}, {pv.head_dim}, {D})")
    if Hq % HKV or Bk != B or v_packed.shape[:2] != (B, HKV) or vbk != pk.vector_bytes \
            or v_packed.shape[-1] != pv.vector_bytes or T > min(cap, v_packed.shape[2]) or T < LQ:
        raise LowbitError(f"packed K {tuple(k_packed.shape)} / V {tuple(v_packed.shape)} do not fit q {tuple(q.shape)}")
    if pv.n_blocks > 2 or D > 256:
        raise LowbitError(f"decode kernel takes head_dim up to 256 (two 128-blocks), got {D}")
    group = Hq // HKV
    if group * LQ > MAX_ROWS:
        raise LowbitError(f"{group * LQ} query rows per KV head is prefill; decode kernel takes at most {MAX_ROWS}")
    if k_packed.stride(-1) != 1 or v_packed.stride(-1) != 1 or q.stride(-1) != 1:
        raise LowbitError("packed K/V and q need a contiguous last dimension")
    scale = D ** -0.5 if scale is None else scale
    if backend not in ("auto", "triton", "cuda"):
        raise LowbitError(f"unknown decode backend {backend!r}: auto, triton or cuda")
    if backend != "triton" and cuda_decode.supported(pk, pv, group * LQ, LQ, k_packed, v_packed) \
            and cuda_decode.available(q.device):
        return _cuda_path(q, k_packed, v_packed, pk, pv, scale, T, splits)
    if backend == "cuda":
        raise LowbitError("the CUDA decode kernel takes K turbo3/turbo4/q8_0 with V turbo3/turbo4, head_dim 128/256, "
                          "one new token, <= 16 query rows per KV head, token-contiguous caches, and NVRTC")
    M = max(16, _pow2(group * LQ))
    bn, sp, nw = default_config(B, HKV, T, D)
    block_n, splits, num_warps = block_n or bn, splits or sp, num_warps or nw
    prefetch = (PREFETCH if prefetch is None else prefetch) and not kq8  # the q8_0 tile has no prefetch variant
    split_len = math.ceil(math.ceil(T / splits) / block_n) * block_n
    splits = math.ceil(T / split_len)
    dev = q.device
    cv, vtab = _tables(pv)
    v16 = _words(v_packed)
    if kq8:  # queries in K's frame (float32), keys as bytes; the turbo K arguments are unused
        qin, kin, ktab, rkt, ck, sk = pk.rotate(q), k_packed, (0,) * 8, cv, cv, cv
        kbits, kbb2, khad = 8, 0, False
    else:
        rkt = cached(pk, "_rkt16", lambda: pk.rot.t().contiguous().to(torch.float16))
        ck, ktab = _tables(pk)
        qin, kin, sk = q, _words(k_packed), pk.signs if pk.hadamard else ck
        kbits, kbb2, khad = pk.bits, pk.block_bytes // 2, pk.hadamard
    op = torch.empty(B * HKV * splits * M * D, dtype=torch.float32, device=dev)
    ml = torch.empty(B * HKV * splits * 2 * M, dtype=torch.float32, device=dev)
    out = torch.empty_like(q)
    _stage1[(B * HKV, splits)](
        qin, kin, v16, rkt, sk, ck, cv, op, ml, T, split_len,
        qin.stride(0), qin.stride(1), qin.stride(2), kin.stride(0), kin.stride(1), kin.stride(2),
        v16.stride(0), v16.stride(1), v16.stride(2), scale * math.log2(math.e), *ktab, *vtab,
        HKV=HKV, GROUP=group, LQ=LQ, M=M, BLK=pv.block, NBLK=pv.n_blocks, KBITS=kbits, VBITS=pv.bits,
        KBB2=kbb2, VBB2=pv.block_bytes // 2, BLOCK_N=block_n, HADAMARD=khad,
        ASM_=USE_ASM, PREFETCH=prefetch, KQ8=kq8, NSPLIT=splits, num_warps=num_warps,
    )
    _stage2[(B * HKV, group * LQ, pv.n_blocks)](
        op, ml, pv.rot, pv.signs if pv.hadamard else pv.rot, out, out.stride(0), out.stride(1), out.stride(2),
        HKV=HKV, GROUP=group, LQ=LQ, M=M, BLK=pv.block, NBLK=pv.n_blocks, HADAMARD=pv.hadamard,
        SC=merge_chunk(splits),
        NSPLIT=splits, num_warps=4,
    )
    return out


@triton.jit
def _dequant_kernel(P, R, S, C, O, T, spb, sph, spt, sob, soh, sot, L0, L1, L2, L3, H0, H1, H2, H3,
                    H: tl.constexpr, BITS: tl.constexpr, BB2: tl.constexpr, BLK: tl.constexpr, NBLK: tl.constexpr,
                    BLOCK_N: tl.constexpr, HADAMARD: tl.constexpr, ASM_: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    tmask = offs < T
    offs64 = offs.to(tl.int64)
    c, nrm = dequant_tile(P + b.to(tl.int64) * spb + h.to(tl.int64) * sph, offs64 * spt, tmask, C,
                          L0, L1, L2, L3, H0, H1, H2, H3, BITS, BB2, BLK, NBLK, BLOCK_N, ASM_)
    bc = tl.arange(0, BLK)
    yb = tl.reshape(c, [BLOCK_N * NBLK, BLK])
    if HADAMARD:
        xb = tl.dot(yb, hadamard_tile(BLK).to(tl.float16)) * tl.load(S + bc)[None, :] * (1.0 / tl.sqrt(BLK * 1.0))
    else:
        xb = tl.dot(yb, tl.load(R + bc[:, None] * BLK + bc[None, :]))  # fp16 R: x = y @ R
    xb = xb * tl.reshape(nrm, [BLOCK_N * NBLK])[:, None]
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
    r16 = cached(p, "_r16", lambda: p.rot.to(torch.float16).contiguous())
    c16, tab = _tables(p)
    w = _words(packed)
    _dequant_kernel[(B * H, triton.cdiv(T, block_n))](
        w, r16, p.signs if p.hadamard else c16, c16, out, T, w.stride(0), w.stride(1), w.stride(2),
        out.stride(0), out.stride(1), out.stride(2), *tab, H=H, BITS=p.bits, BB2=p.block_bytes // 2, BLK=p.block,
        NBLK=p.n_blocks, BLOCK_N=block_n, HADAMARD=p.hadamard, ASM_=USE_ASM, num_warps=8,
    )
    return out
