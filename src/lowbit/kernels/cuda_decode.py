"""Split-KV decode attention over a packed K/V cache, hand-written CUDA (the fast path on NVIDIA GPUs).

Why CUDA next to the Triton kernel (`turbo_attention`): unpacking is the bound (docs/kernels.md §4), and
Triton spends most of its instructions moving the unpacked tile into the tensor-core layout (shared
memory, barriers, cross-warp softmax). Here one warp owns one split of one (batch, KV head):
- K never leaves registers: each lane unpacks whole 16-value units of its token (turbo: `prmt` lookups from a
  register table; q8_0: int8 -> fp16 by a byte permute into 1024 + u, minus 1152, times the block's scale)
  and the fp16 pairs ARE the `mma.m16n8k16` B fragments. That fixes a permutation of the head dimension
  inside the kernel (`kernel_dim_order`, one per key format); the queries are rotated into that order once
  (`turbo_attention.rotate_queries` / `q8_queries`), so q·k is unchanged;
- online softmax within the warp (quad shuffles, no barriers); the scores' fragments become the P operand
  in registers (the FlashAttention-2 identity between C and A fragments);
- V tiles are unpacked to warp-private shared memory and read back transposed with `ldmatrix.trans`.
Output: the same per-split partials (rotated frame, base-2 max, sum) as the Triton stage 1, so the Triton
stage 2 merges them and applies V's inverse rotation.

One template, instantiated per (head_dim, K format, V format): K turbo3, turbo4 or q8_0; V turbo3 or turbo4
(mse, 128-value blocks); head_dim 128 or 256; up to 16 query rows per KV head, one new token; anything else
takes the Triton kernel. Each instantiation is compiled at its first use with NVRTC and launched through
the CUDA driver (ctypes), both found next to torch or in the CUDA toolkit.
"""

from __future__ import annotations

import functools
import math

import torch

ROWS = 16  # query rows per KV head (GQA group, padded): the mma M dimension
K_FORMATS = {"turbo3": 3, "turbo4": 4, "q8_0": 8}  # template argument KF: bits per code, 8 for q8_0
V_FORMATS = {"turbo3": 3, "turbo4": 4}

SOURCE = r"""
typedef unsigned int u32;
typedef unsigned short u16;
#define NEG_INF __int_as_float(0xff800000)

// Formats: F = 3, 4: TurboQuant mse, 128-value blocks of 16*F index bytes + fp16 norm;
//          F = 8: ggml q8_0, 32-value blocks of fp16 scale + 32 int8.
__host__ __device__ constexpr int block_values(int f) { return f == 8 ? 32 : 128; }
__host__ __device__ constexpr int block_bytes(int f) { return f == 8 ? 34 : 16 * f + 2; }
__host__ __device__ constexpr int vector_bytes(int f, int d) { return d / block_values(f) * block_bytes(f); }

__device__ __forceinline__ u32 f2_to_h2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ void mma16816(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(u32* r, const void* smem) {
    u32 addr = (u32)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(u32* r, const void* smem) {
    u32 addr = (u32)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// 8 codes (24 bits) -> nibbles (codes 0-3 in bits 0-15, 4-7 in bits 16-31): fields are disjoint, so
// x + t*(2^s - 1) moves field t up by s bits.
__device__ __forceinline__ u32 spread8(u32 x) {
    u32 t = x & 0xFFF000u; x += t * 15u;
    t = x & 0x0FC00FC0u; x += t * 3u;
    t = x & 0x38383838u; x += t;
    return x;
}

// 4 codes < 8 in the nibbles of sel -> 2 fp16 pairs, from the 8-entry table (lo bytes T0:T1, hi bytes T4:T5).
__device__ __forceinline__ void look8(u32 sel, const u32* T, u32& p0, u32& p1) {
    u32 l = __byte_perm(T[0], T[1], sel), h = __byte_perm(T[4], T[5], sel);
    p0 = __byte_perm(l, h, 0x5140);
    p1 = __byte_perm(l, h, 0x7362);
}

// 4 codes < 16 in the nibbles of x -> 2 fp16 pairs, from the 16-entry table: the low 3 bits pick a byte of
// entries 0-7 and of entries 8-15, the top bit (a 0x00/0xFF byte mask) chooses between them.
__device__ __forceinline__ void look16(u32 x, const u32* T, u32& p0, u32& p1) {
    const u32 r = x & 0x7777u, mk = __byte_perm(0u, 0xFFFFFFFFu, (x >> 1) & 0x4444u);
    const u32 ln = __byte_perm(T[0], T[1], r), lp = __byte_perm(T[2], T[3], r);
    const u32 hn = __byte_perm(T[4], T[5], r), hp = __byte_perm(T[6], T[7], r);
    const u32 l = (lp & mk) | (ln & ~mk), h = (hp & mk) | (hn & ~mk);
    p0 = __byte_perm(l, h, 0x5140);
    p1 = __byte_perm(l, h, 0x7362);
}

// One 16-code turbo unit (F little-endian 16-bit words at p) -> 8 fp16 pairs, pair i = codes 2i | 2i+1 << 16.
template <int F>
__device__ __forceinline__ void turbo_unit(const unsigned char* p, const u32* T, u32* out) {
    const u16* q = (const u16*)p;
    if constexpr (F == 3) {
        const u32 w0 = q[0], w1 = q[1], w2 = q[2];
        const u32 x = spread8(w0 | ((w1 & 0xFFu) << 16));
        const u32 y = spread8((w1 >> 8) | (w2 << 8));
        look8(x, T, out[0], out[1]);
        look8(x >> 16, T, out[2], out[3]);
        look8(y, T, out[4], out[5]);
        look8(y >> 16, T, out[6], out[7]);
    } else {
        const u32 x = (u32)q[0] | ((u32)q[1] << 16), y = (u32)q[2] | ((u32)q[3] << 16);
        look16(x, T, out[0], out[1]);
        look16(x >> 16, T, out[2], out[3]);
        look16(y, T, out[4], out[5]);
        look16(y >> 16, T, out[6], out[7]);
    }
}

// Unit i (16 values) of lane c of the token vector at `tok` -> 8 fp16 pairs, the B fragments of k-steps
// 4i..4i+3 (pairs 2j, 2j+1 for k-step 4i+j). turbo: units c, c+4, ... of 16 codes (kernel_dim_order).
// q8_0: lane c owns blocks c, c+4, ...; unit i is half (i & 1) of block c + 4 (i >> 1); each int8 x becomes
// fp16 1024 + (x ^ 0x80) = 1152 + x by a byte permute, then (x) * d exactly rounded once.
template <int F>
__device__ __forceinline__ void key_unit(const unsigned char* tok, int i, int c, const u32* T, u32* out) {
    if constexpr (F == 8) {
        const int blk = c + 4 * (i >> 1);
        const u16* q = (const u16*)(tok + blk * 34 + 2 + (i & 1) * 16);
        const u32 d = *(const u16*)(tok + blk * 34);
        const u32 d2 = d | (d << 16);
#pragma unroll
        for (int m = 0; m < 8; m++)
            out[m] = hmul2(hsub2(__byte_perm((u32)q[m] ^ 0x8080u, 0x6464u, 0x5140), 0x64806480u), d2);
    } else {
        turbo_unit<F>(tok + (i >> 1) * block_bytes(F) + (c + 4 * (i & 1)) * 2 * F, T, out);
    }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
    u32 s = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(s), "l"(gmem), "r"(src_bytes));
}

// Stage the packed bytes of 16 tokens (contiguous in the cache) into shared memory. `src` is the 16-byte
// aligned address at or below the row's first byte, so a step [from, from + TB) of bytes from `src` is
// copied as TB/16 + 1 aligned chunks (the caller reads it at offset `mis`); bytes at or past `lim` are
// zero-filled, never read.
template <int TB>
__device__ __forceinline__ void stage(unsigned char* dst, const unsigned char* src, int from, int lim, int lane) {
    constexpr int NCH = TB / 16 + 1;
    constexpr int ITER = (NCH + 31) / 32;
    const unsigned char* s = src + from + 16 * lane;
    unsigned char* d = dst + 16 * lane;
    if (from + 16 * NCH <= lim) {  // the common case: every chunk lies inside the split
#pragma unroll
        for (int k = 0; k < ITER; k++)
            if (32 * (k + 1) <= NCH || lane + 32 * k < NCH) cp_async16(d + 512 * k, s + 512 * k, 16);
    } else {
        const int rem = lim - from - 16 * lane;
#pragma unroll
        for (int k = 0; k < ITER; k++) {
            const int n = min(max(rem - 512 * k, 0), 16);
            if (32 * (k + 1) <= NCH || lane + 32 * k < NCH) cp_async16(d + 512 * k, n ? s + 512 * k : src, n);
        }
    }
    asm volatile("cp.async.commit_group;");
}

template <int D, int KF, int VF>
__global__ void __launch_bounds__(32, D == 128 ? 16 : 0) lowbit_decode(
    const unsigned short* __restrict__ QK, const unsigned char* __restrict__ K, const unsigned char* __restrict__ V,
    long long skb, long long skh, long long svb, long long svh,
    int HKV, int T, int split_len, int nsplit,
    u32 KT0, u32 KT1, u32 KT2, u32 KT3, u32 KT4, u32 KT5, u32 KT6, u32 KT7,
    u32 VT0, u32 VT1, u32 VT2, u32 VT3, u32 VT4, u32 VT5, u32 VT6, u32 VT7,
    float* __restrict__ OP, float* __restrict__ ML,
    int rows)  // last: as an int before the table words it shifted them in the parameter bank, and ptxas gave the loop 61 more instructions
{
    constexpr int UPL = D / 64;       // 16-value units per lane per token
    constexpr int NDT = D / 8;        // n8 tiles of the output
    constexpr int LD = D + 8;         // shared row stride (halves): conflict-free ldmatrix
    constexpr int KBB = block_bytes(KF), VBB = block_bytes(VF);
    constexpr int KVB = vector_bytes(KF, D), VVB = vector_bytes(VF, D);  // token stride = vector bytes
    constexpr int KTB = 16 * KVB, VTB = 16 * VVB;  // bytes per 16-token step
    constexpr int KS = KF == 8 ? 1 : D / 128;      // score accumulators: one per K norm block
    __shared__ __align__(16) unsigned short qs[16 * LD];
    __shared__ __align__(16) unsigned short vs[16 * LD];
    __shared__ __align__(16) unsigned char kst[2][KTB + 16];
    __shared__ __align__(16) unsigned char vst[2][VTB + 16];
    const u32 KT[8] = {KT0, KT1, KT2, KT3, KT4, KT5, KT6, KT7};
    const u32 VT[8] = {VT0, VT1, VT2, VT3, VT4, VT5, VT6, VT7};

    const int lane = threadIdx.x, g = lane >> 2, c = lane & 3;
    const int bh = blockIdx.x, sp = blockIdx.y;
    const int b = bh / HKV, h = bh - (bh / HKV) * HKV;
    const int start = sp * split_len;
    const int end = min(start + split_len, T);
    // Rows need not start 16-byte aligned: copy from the aligned address below and read `mis` bytes in
    // (steps are a multiple of 16 bytes, so `mis` is the same for every step of the split).
    const unsigned char* kb = K + b * skb + h * skh + (long long)start * KVB;
    const unsigned char* vb = V + b * svb + h * svh + (long long)start * VVB;
    const int kmis = (int)((size_t)kb & 15), vmis = (int)((size_t)vb & 15);
    kb -= kmis;
    vb -= vmis;
    const int klim = (end - start) * KVB + kmis, vlim = (end - start) * VVB + vmis;  // split bytes < 2^31
    stage<KTB>(kst[0], kb, 0, klim, lane);
    stage<VTB>(vst[0], vb, 0, vlim, lane);
    const unsigned short* q = QK + (size_t)bh * 16 * D;
    for (int i = lane; i < 16 * D / 8; i += 32) {
        int r = i / (D / 8), col = (i - r * (D / 8)) * 8;
        *(uint4*)&qs[r * LD + col] = *(const uint4*)&q[r * D + col];
    }

    float acc[NDT][4];
#pragma unroll
    for (int i = 0; i < NDT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float m_g = -1e30f, m_g8 = -1e30f, l_g = 0.f, l_g8 = 0.f;  // rows g and g+8 (l: this lane's part)

    int buf = 0;
    for (int t0 = start; t0 < end; t0 += 16, buf ^= 1) {
        if (t0 + 16 < end) {  // next step's bytes load while this one computes
            stage<KTB>(kst[buf ^ 1], kb, (t0 + 16 - start) * KVB, klim, lane);
            stage<VTB>(vst[buf ^ 1], vb, (t0 + 16 - start) * VVB, vlim, lane);
            asm volatile("cp.async.wait_group 2;");
        } else {
            asm volatile("cp.async.wait_group 0;");
        }
        __syncwarp();
        const unsigned char* kt = kst[buf] + kmis;
        const unsigned char* vt = vst[buf] + vmis;
        // ---- scores of 16 tokens: two n8 tiles; lane unpacks tokens g and 8 + g of the step ----
        float s[2][KS][4];  // [tile][K norm block][fragment]
#pragma unroll
        for (int t = 0; t < 2; t++)
#pragma unroll
            for (int j = 0; j < KS; j++) s[t][j][0] = s[t][j][1] = s[t][j][2] = s[t][j][3] = 0.f;
#pragma unroll
        for (int i = 0; i < UPL; i++) {
            const int sj = KF == 8 ? 0 : (i >> 1);
            u32 pa[8], pb[8];
            key_unit<KF>(kt + g * KVB, i, c, KT, pa);
            key_unit<KF>(kt + (g + 8) * KVB, i, c, KT, pb);
#pragma unroll
            for (int j = 0; j < 4; j++) {  // k-step 4i + j: B fragment = pairs (2j, 2j+1) of the unit
                u32 qa[4];
                ldsm_x4(qa, &qs[(lane & 15) * LD + (4 * i + j) * 16 + (lane >> 4) * 8]);
                mma16816(s[0][sj], qa, pa[2 * j], pa[2 * j + 1]);
                mma16816(s[1][sj], qa, pb[2 * j], pb[2 * j + 1]);
            }
        }
        // ---- norms, mask, online softmax (rows g and g+8; this lane: tokens 2c, 2c+1 of each tile) ----
        float p[2][4], nv[2][2][D / 128];  // nv[tile][token][V block]
        float mx_g = NEG_INF, mx_g8 = NEG_INF;
#pragma unroll
        for (int t = 0; t < 2; t++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int r = 8 * t + 2 * c + e;
                const bool ok = t0 + r < end;
                float sc0 = 0.f, sc1 = 0.f;
                if constexpr (KF == 8) {  // the scales are inside the fragments
                    sc0 = s[t][0][e];
                    sc1 = s[t][0][2 + e];
                } else {
#pragma unroll
                    for (int j = 0; j < KS; j++) {
                        const float nk = h2f(*(const u16*)(kt + r * KVB + j * KBB + 16 * KF));
                        sc0 += nk * s[t][j][e];
                        sc1 += nk * s[t][j][2 + e];
                    }
                }
#pragma unroll
                for (int j = 0; j < D / 128; j++) nv[t][e][j] = h2f(*(const u16*)(vt + r * VVB + j * VBB + 16 * VF));
                p[t][e] = ok ? sc0 : NEG_INF;
                p[t][2 + e] = ok ? sc1 : NEG_INF;
                mx_g = fmaxf(mx_g, p[t][e]);
                mx_g8 = fmaxf(mx_g8, p[t][2 + e]);
            }
        }
        mx_g = fmaxf(mx_g, __shfl_xor_sync(0xffffffffu, mx_g, 1));
        mx_g = fmaxf(mx_g, __shfl_xor_sync(0xffffffffu, mx_g, 2));
        mx_g8 = fmaxf(mx_g8, __shfl_xor_sync(0xffffffffu, mx_g8, 1));
        mx_g8 = fmaxf(mx_g8, __shfl_xor_sync(0xffffffffu, mx_g8, 2));
        const float mn_g = fmaxf(m_g, mx_g), mn_g8 = fmaxf(m_g8, mx_g8);
        const float al_g = exp2f(m_g - mn_g), al_g8 = exp2f(m_g8 - mn_g8);
        m_g = mn_g;
        m_g8 = mn_g8;
        float sum_g = 0.f, sum_g8 = 0.f;
#pragma unroll
        for (int t = 0; t < 2; t++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                p[t][e] = exp2f(p[t][e] - mn_g);
                p[t][2 + e] = exp2f(p[t][2 + e] - mn_g8);
                sum_g += p[t][e];
                sum_g8 += p[t][2 + e];
            }
        }
        l_g = l_g * al_g + sum_g;
        l_g8 = l_g8 * al_g8 + sum_g8;
        if (__any_sync(0xffffffffu, al_g != 1.f || al_g8 != 1.f)) {  // the max moved: rescale
#pragma unroll
            for (int i = 0; i < NDT; i++) {
                acc[i][0] *= al_g; acc[i][1] *= al_g; acc[i][2] *= al_g8; acc[i][3] *= al_g8;
            }
        }
        // P (times V's norms) as the A fragment of the 16-token step, one per 128-block
        u32 pf[D / 128][4];
#pragma unroll
        for (int j = 0; j < D / 128; j++) {
            pf[j][0] = f2_to_h2(p[0][0] * nv[0][0][j], p[0][1] * nv[0][1][j]);
            pf[j][1] = f2_to_h2(p[0][2] * nv[0][0][j], p[0][3] * nv[0][1][j]);
            pf[j][2] = f2_to_h2(p[1][0] * nv[1][0][j], p[1][1] * nv[1][1][j]);
            pf[j][3] = f2_to_h2(p[1][2] * nv[1][0][j], p[1][3] * nv[1][1][j]);
        }
        // ---- V: unpack 16 tokens into shared memory (row = token), then P @ V with ldmatrix.trans ----
        // (rows past the split's end hold zero bytes: finite codebook values times p = 0)
#pragma unroll
        for (int i = 0; i < UPL; i++) {
            const int off = (i >> 1) * VBB + (c + 4 * (i & 1)) * 2 * VF, u = c + 4 * i;
            u32 va[8], vc[8];
            turbo_unit<VF>(vt + g * VVB + off, VT, va);
            turbo_unit<VF>(vt + (g + 8) * VVB + off, VT, vc);
            *(uint4*)&vs[g * LD + 16 * u] = make_uint4(va[0], va[1], va[2], va[3]);
            *(uint4*)&vs[g * LD + 16 * u + 8] = make_uint4(va[4], va[5], va[6], va[7]);
            *(uint4*)&vs[(g + 8) * LD + 16 * u] = make_uint4(vc[0], vc[1], vc[2], vc[3]);
            *(uint4*)&vs[(g + 8) * LD + 16 * u + 8] = make_uint4(vc[4], vc[5], vc[6], vc[7]);
        }
        __syncwarp();
        const int mi = lane >> 3;
#pragma unroll
        for (int d2 = 0; d2 < NDT / 2; d2++) {  // 16 output dims per ldmatrix.x4.trans
            u32 bv[4];
            ldsm_x4_t(bv, &vs[((mi & 1) * 8 + (lane & 7)) * LD + d2 * 16 + (mi >> 1) * 8]);
            mma16816(acc[2 * d2], pf[(d2 * 16) / 128], bv[0], bv[1]);
            mma16816(acc[2 * d2 + 1], pf[(d2 * 16) / 128], bv[2], bv[3]);
        }
        __syncwarp();
    }
    l_g += __shfl_xor_sync(0xffffffffu, l_g, 1);
    l_g += __shfl_xor_sync(0xffffffffu, l_g, 2);
    l_g8 += __shfl_xor_sync(0xffffffffu, l_g8, 1);
    l_g8 += __shfl_xor_sync(0xffffffffu, l_g8, 2);
    // Partials of the `rows` real query rows only (the merge reads no others): at batch 1 the padding rows'
    // float32 partials would be most of what the kernel writes (a GQA group of 4 pads to 16).
    const size_t base = (size_t)bh * nsplit + sp;
    float* o = OP + base * 16 * D;
    if (g < rows) {
#pragma unroll
        for (int i = 0; i < NDT; i++) *(float2*)&o[g * D + i * 8 + 2 * c] = make_float2(acc[i][0], acc[i][1]);
        if (c == 0) {
            ML[base * 32 + g] = m_g;
            ML[base * 32 + 16 + g] = l_g;
        }
    }
    if (g + 8 < rows) {
#pragma unroll
        for (int i = 0; i < NDT; i++) *(float2*)&o[(g + 8) * D + i * 8 + 2 * c] = make_float2(acc[i][2], acc[i][3]);
        if (c == 0) {
            ML[base * 32 + g + 8] = m_g8;
            ML[base * 32 + 16 + g + 8] = l_g8;
        }
    }
}
"""


def kernel_name(D: int, kfmt: str, vfmt: str) -> str:
    return f"lowbit_decode<{D}, {K_FORMATS[kfmt]}, {V_FORMATS[vfmt]}>"


KERNELS = tuple(kernel_name(D, k, v) for D in (128, 256) for k in K_FORMATS for v in V_FORMATS)


def key_format(pk) -> str:
    """The key format name of kernel parameters (TurboParams or Q8Params)."""
    return "q8_0" if pk.bits == 8 else f"turbo{pk.bits}"


def kernel_dim_order(head_dim: int, kfmt: str = "turbo3") -> torch.Tensor:
    """perm[kappa] = the storage dimension that kernel dimension kappa holds. Kernel dimension kappa is k index
    2c + 8r + e of k-step s = 4i + j (kappa = 16 s + 8 r + 2 c + e): lane c's fragment register r, half e,
    which is pair 2j + r of the lane's unit i (see SOURCE, `key_unit`):
    - turbo: unit i of lane c is the 16 codes of unit c + 4i, so storage = 16 (c + 4i) + 4j + 2r + e;
    - q8_0: unit i of lane c is half (i & 1) of 32-block c + 4 (i >> 1), storage = 32 (c + 4 (i >> 1)) +
      16 (i & 1) + 4j + 2r + e."""
    k = torch.arange(head_dim)
    ks, r, c, e = k >> 4, (k >> 3) & 1, (k >> 1) & 3, k & 1
    i, j = ks >> 2, ks & 3
    if kfmt == "q8_0":
        return 32 * (c + 4 * (i >> 1)) + 16 * (i & 1) + 4 * j + 2 * r + e
    return 16 * (c + 4 * i) + 4 * j + 2 * r + e


def supported(pk, pv, group_rows: int, lq: int, k_packed: torch.Tensor, v_packed: torch.Tensor) -> bool:
    """Shapes, formats and layouts the CUDA kernel takes (otherwise the Triton kernel runs)."""
    def token_contiguous(t):  # vectors back to back (a step is one contiguous run), 2-byte aligned
        return t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] and t.data_ptr() % 2 == 0
    kf = key_format(pk)
    k_ok = kf in K_FORMATS and (kf == "q8_0" or (pk.block == 128 and pk.block_bytes == 16 * pk.bits + 2))
    v_ok = pv.bits != 8 and f"turbo{pv.bits}" in V_FORMATS and pv.block == 128 and pv.block_bytes == 16 * pv.bits + 2
    return (k_ok and v_ok and pk.head_dim in (128, 256) and pv.head_dim == pk.head_dim and lq == 1
            and group_rows <= ROWS and token_contiguous(k_packed) and token_contiguous(v_packed))


class _Driver:
    """NVRTC + the CUDA driver through ctypes: each instantiation compiled once per device at its first launch,
    launched on torch's current stream (so CUDA-graph capture records it)."""

    def __init__(self, device: torch.device):
        import ctypes

        self.ct = ctypes
        self.device = device
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.nvrtc = ctypes.CDLL(_find_nvrtc())
        major, minor = torch.cuda.get_device_capability(device)
        self.arch = f"--gpu-architecture=compute_{major}{minor}"
        self.functions = {}
        self.modules = []
        torch.cuda.init()

    def function(self, name: str):
        if name not in self.functions:
            ct = self.ct
            ptx, lowered = self._compile(self.arch, (name,))
            with torch.cuda.device(self.device):
                torch.empty(1, device=self.device)  # the primary context is current
                mod = ct.c_void_p()
                self._check(self.cuda.cuModuleLoadData(ct.byref(mod), ct.c_char_p(ptx)), "cuModuleLoadData")
                fn = ct.c_void_p()
                self._check(self.cuda.cuModuleGetFunction(ct.byref(fn), mod, lowered[name]), "cuModuleGetFunction")
            self.modules.append(mod)
            self.functions[name] = fn
        return self.functions[name]

    def _check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what} failed with CUDA error {rc}")

    def _compile(self, arch: str, names=KERNELS):
        ct, nv = self.ct, self.nvrtc
        prog = ct.c_void_p()
        self._nv(nv.nvrtcCreateProgram(ct.byref(prog), SOURCE.encode(), b"lowbit_decode.cu", 0, None, None))
        for n in names:
            self._nv(nv.nvrtcAddNameExpression(prog, n.encode()))
        opts = [arch.encode(), b"-std=c++17", b"-default-device"]
        rc = nv.nvrtcCompileProgram(prog, len(opts), (ct.c_char_p * len(opts))(*opts))
        if rc != 0:
            size = ct.c_size_t()
            nv.nvrtcGetProgramLogSize(prog, ct.byref(size))
            log = ct.create_string_buffer(size.value)
            nv.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC: {log.value.decode(errors='replace')[:2000]}")
        size = ct.c_size_t()
        self._nv(nv.nvrtcGetPTXSize(prog, ct.byref(size)))
        ptx = ct.create_string_buffer(size.value)
        self._nv(nv.nvrtcGetPTX(prog, ptx))
        lowered = {}
        for n in names:
            low = ct.c_char_p()
            self._nv(nv.nvrtcGetLoweredName(prog, n.encode(), ct.byref(low)))
            lowered[n] = ct.c_char_p(bytes(low.value))
        return ptx.value, lowered

    def _nv(self, rc):
        if rc != 0:
            raise RuntimeError(f"NVRTC call failed with {rc}")

    def launch(self, name: str, grid, block, args, stream: int) -> None:
        ct = self.ct
        fn = self.function(name)
        holders = [a if isinstance(a, ct._SimpleCData) else ct.c_uint64(a) for a in args]
        params = (ct.c_void_p * len(holders))(*[ct.cast(ct.pointer(h), ct.c_void_p) for h in holders])
        self._check(self.cuda.cuLaunchKernel(fn, ct.c_uint(grid[0]), ct.c_uint(grid[1]), ct.c_uint(1),
                                             ct.c_uint(block), ct.c_uint(1), ct.c_uint(1), ct.c_uint(0),
                                             ct.c_void_p(stream), params, None), "cuLaunchKernel")


def _find_nvrtc() -> str:
    import ctypes.util
    import glob
    import os
    import sys

    found = []
    for root in {sys.prefix, os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(torch.__file__))}:
        found += sorted(glob.glob(os.path.join(root, "**", "libnvrtc.so*"), recursive=True))
    found += sorted(glob.glob("/usr/local/cuda*/lib*/libnvrtc.so*"))
    lib = ctypes.util.find_library("nvrtc")
    found = [f for f in found if "builtins" not in f and ".alt." not in f] + ([lib] if lib else [])
    if not found:
        raise RuntimeError("no NVRTC library (libnvrtc.so) found")
    return found[0]


@functools.lru_cache(maxsize=None)
def _driver(index: int) -> _Driver:
    return _Driver(torch.device("cuda", index))


@functools.lru_cache(maxsize=None)
def _available(index: int) -> bool:
    if torch.cuda.get_device_capability(index) < (8, 0):  # mma.m16n8k16, ldmatrix, cp.async: sm_80 and later
        return False
    try:
        _driver(index).function(KERNELS[0])  # NVRTC compiles and the driver loads one instantiation
    except Exception:  # no NVRTC or driver: the Triton kernel runs (decided once per device)
        return False
    return True


def available(device) -> bool:
    device = torch.device(device)
    return device.type == "cuda" and _available(device.index if device.index is not None else torch.cuda.current_device())


def stage1(qk: torch.Tensor, k_packed: torch.Tensor, v_packed: torch.Tensor, kfmt: str, vfmt: str, ktab, vtab,
           T: int, split_len: int, splits: int, op: torch.Tensor, ml: torch.Tensor, rows: int = ROWS) -> None:
    """Launch the CUDA split kernel: qk [B*HKV, 16, D] fp16 in kernel_dim_order(D, kfmt), rotated and scaled;
    ktab/vtab the 8 codebook words of turbo formats (`unpack.table_words`; ignored for q8_0); partials are
    written for the first `rows` query rows of each KV head (the real ones)."""
    import ctypes as ct

    B, HKV, _, _ = k_packed.shape
    D = qk.shape[-1]
    dev = qk.device.index if qk.device.index is not None else torch.cuda.current_device()
    words = [ct.c_uint32(w & 0xFFFFFFFF) for w in (*ktab, *vtab)]
    args = [qk.data_ptr(), k_packed.data_ptr(), v_packed.data_ptr(),
            ct.c_int64(k_packed.stride(0)), ct.c_int64(k_packed.stride(1)),
            ct.c_int64(v_packed.stride(0)), ct.c_int64(v_packed.stride(1)),
            ct.c_int32(HKV), ct.c_int32(T), ct.c_int32(split_len), ct.c_int32(splits), *words, op.data_ptr(),
            ml.data_ptr(), ct.c_int32(rows)]
    _driver(dev).launch(kernel_name(D, kfmt, vfmt), (B * HKV, splits), 32, args,
                        torch.cuda.current_stream(qk.device).cuda_stream)


def split_length(batch_heads: int, T: int, sms: int) -> int:
    """Tokens per warp (one warp per split): about 8 warps per SM, between 128 and 1024 tokens, whole
    16-token steps (measured on an H200, docs/kernels.md: shorter splits starve the SMs of work per warp,
    longer ones leave SMs idle)."""
    want = math.ceil(batch_heads * T / (8 * sms) / 16) * 16
    return max(128, min(1024, want))
