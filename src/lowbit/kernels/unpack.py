"""Packed TurboQuant indices -> fp16 codebook values, in registers (Triton helpers shared by the kernels).

The packed layout (`TurboLayout.fields`, `lowbit.quant.packing`): per block, b-bit indices as a
little-endian bitstream, so every 16 codes fill exactly 2·b bytes, i.e. b aligned 16-bit words (every
vector and block size is even). A "unit" is those 16 codes; the kernels load a unit's b words with
2-byte loads (3 loads per 16 codes for turbo3, no per-value gathers).

Codebook lookup without memory: on the GPU one inline-PTX block per unit spreads the codes into 4-bit
nibbles (mask-and-multiply steps: fields are disjoint, so x + t·(2^s - 1) moves field t up by s bits)
and looks the fp16 values up with `prmt` (byte permute), which selects any of 8 bytes per nibble:
one `prmt` on the low bytes and one on the high bytes of the 8-entry table give 4 values, and two
more interleave them into fp16 pairs. The table is 8 kernel arguments (uniform registers), so the
values are bit-identical to the fp16 codebook. 16-entry (4-bit) codebooks take two 8-entry halves and
a byte select on the index's top bit. About 2 (turbo2/3) to 3 (turbo4) integer instructions per code.

Under TRITON_INTERPRET=1 (CI) there is no PTX: the same function shifts codes out of the words and
loads the table from memory. tests/test_kernels_unpack.py runs the PTX text itself through a small
CPU emulator of its instructions, so CI checks the GPU path's arithmetic too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lowbit.kernels import _interpret

_interpret.apply()

USE_ASM = not _interpret.INTERPRET  # the interpreter cannot run inline PTX

# Lookup of 4 codes whose 3-bit indices sit in the nibbles of SEL: L = low bytes of table entries 0-7
# in $12,$13; H = high bytes in $16,$17. Two prmt pick the bytes, two interleave them into fp16 pairs.
_LOOK8 = """
prmt.b32 l, $12, $13, {sel};
prmt.b32 h, $16, $17, {sel};
prmt.b32 ${o0}, l, h, 0x5140;
prmt.b32 ${o1}, l, h, 0x7362;"""

# 16-entry table: entries 0-7 in ($12,$13 | $16,$17), 8-15 in ($14,$15 | $18,$19); MK selects per byte.
_LOOK16 = """
prmt.b32 ln, $12, $13, {sel};
prmt.b32 lp, $14, $15, {sel};
prmt.b32 hn, $16, $17, {sel};
prmt.b32 hp, $18, $19, {sel};
prmt.b32 mk, 0, 0xFFFFFFFF, {msel};
lop3.b32 l, lp, ln, mk, 0xE4;
lop3.b32 h, hp, hn, mk, 0xE4;
prmt.b32 ${o0}, l, h, 0x5140;
prmt.b32 ${o1}, l, h, 0x7362;"""


def _asm3() -> str:
    body = []
    for half, (a, b, sel) in enumerate((("$8", "$9", "0x2410"), ("$9", "$10", "0x2541"))):
        # 8 codes (24 bits) of the 48-bit unit into x, top byte zero.
        body.append(f"""
prmt.b32 x, {a}, {b}, {sel};
and.b32 t, x, 0xFFF000;
mad.lo.u32 x, t, 15, x;
and.b32 t, x, 0x0FC00FC0;
mad.lo.u32 x, t, 3, x;
and.b32 t, x, 0x38383838;
add.u32 x, x, t;""")
        body.append(_LOOK8.format(sel="x", o0=4 * half, o1=4 * half + 1))
        body.append("\nshr.u32 s, x, 16;")
        body.append(_LOOK8.format(sel="s", o0=4 * half + 2, o1=4 * half + 3))
    return "{\n.reg .b32 x, t, s, l, h;" + "".join(body) + "\n}"


def _asm2() -> str:
    body = ["\nprmt.b32 w, $8, $9, 0x5410;"]
    for half in range(2):
        src = "and.b32 x, w, 0xFFFF;" if half == 0 else "shr.u32 x, w, 16;"
        body.append(f"""
{src}
and.b32 t, x, 0xFF00;
mad.lo.u32 x, t, 255, x;
and.b32 t, x, 0x00F000F0;
mad.lo.u32 x, t, 15, x;
and.b32 t, x, 0x0C0C0C0C;
mad.lo.u32 x, t, 3, x;""")
        body.append(_LOOK8.format(sel="x", o0=4 * half, o1=4 * half + 1))
        body.append("\nshr.u32 s, x, 16;")
        body.append(_LOOK8.format(sel="s", o0=4 * half + 2, o1=4 * half + 3))
    return "{\n.reg .b32 w, x, t, s, l, h;" + "".join(body) + "\n}"


def _asm4() -> str:
    body = []
    for half, (a, b) in enumerate((("$8", "$9"), ("$10", "$11"))):
        body.append(f"""
prmt.b32 x, {a}, {b}, 0x5410;
and.b32 r, x, 0x77777777;
shr.u32 m, x, 1;
and.b32 m, m, 0x44444444;""")
        body.append(_LOOK16.format(sel="r", msel="m", o0=4 * half, o1=4 * half + 1))
        body.append("\nshr.u32 r, r, 16;\nshr.u32 m, m, 16;")
        body.append(_LOOK16.format(sel="r", msel="m", o0=4 * half + 2, o1=4 * half + 3))
    return "{\n.reg .b32 x, r, m, ln, lp, hn, hp, mk, l, h;" + "".join(body) + "\n}"


ASM = {2: _asm2(), 3: _asm3(), 4: _asm4()}
_ASM2, _ASM3, _ASM4 = tl.constexpr(ASM[2]), tl.constexpr(ASM[3]), tl.constexpr(ASM[4])
_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 8 + ["r"] * 12))  # 8 fp16 pairs out; 4 words + 8 table words in


def table_words(centroids: torch.Tensor) -> tuple[int, ...]:
    """The fp16 codebook as 8 int32 kernel arguments: low bytes of entries 0-3, 4-7, 8-11, 12-15, then
    the high bytes likewise (entries past the codebook are 0)."""
    bits = [int(b) & 0xFFFF for b in centroids.detach().cpu().to(torch.float16).view(torch.int16).tolist()]
    bits += [0] * (16 - len(bits))

    def word(vals):
        w = sum((v & 0xFF) << (8 * i) for i, v in enumerate(vals))
        return w - (1 << 32) if w >= 1 << 31 else w

    lo = [word(bits[i:i + 4]) for i in range(0, 16, 4)]
    hi = [word([b >> 8 for b in bits[i:i + 4]]) for i in range(0, 16, 4)]
    return tuple(lo + hi)


@triton.jit
def _u16(x):
    """A loaded 16-bit word (int16 view of the bytes), zero-extended to int32."""
    return x.to(tl.uint16, bitcast=True).to(tl.int32)


@triton.jit
def load_units(P16, row16, tmask, BITS: tl.constexpr, BB2: tl.constexpr, BLK: tl.constexpr, NBLK: tl.constexpr):
    """The packed words of a tile of tokens whose vectors start at 16-bit word offsets row16 [N]:
    4 int32 tensors [N, NBLK, BLK/16] (word i of each 16-code unit; unused words repeat word 0) and the
    fp16 norm bits [N, NBLK]."""
    U: tl.constexpr = BLK // 16
    j = tl.arange(0, NBLK)
    u = tl.arange(0, U)
    off = row16[:, None, None] + j[None, :, None] * BB2 + u[None, None, :] * BITS
    m3 = tmask[:, None, None]
    w0 = _u16(tl.load(P16 + off, mask=m3, other=0))
    w1 = _u16(tl.load(P16 + off + 1, mask=m3, other=0))
    w2 = w0
    w3 = w0
    if BITS >= 3:
        w2 = _u16(tl.load(P16 + off + 2, mask=m3, other=0))
    if BITS == 4:
        w3 = _u16(tl.load(P16 + off + 3, mask=m3, other=0))
    n16 = tl.load(P16 + row16[:, None] + j[None, :] * BB2 + BLK * BITS // 16, mask=tmask[:, None], other=0)
    return w0, w1, w2, w3, n16


@triton.jit
def pairs_to_values(o0, o1, o2, o3, o4, o5, o6, o7):
    """8 int32 tensors [N, B, U] of fp16 pairs (o_k = values 2k | 2k+1 << 16) -> fp16 [N, B, U, 16] in order.

    tl.join adds its new axis last, so the last join picks the fastest-moving index: join (o_k, o_k+4)
    first, then (+2), then (+1), for flat position 4·a + 2·b + c = o_(4a+2b+c)."""
    p = tl.join(tl.join(tl.join(o0, o4), tl.join(o2, o6)), tl.join(tl.join(o1, o5), tl.join(o3, o7)))
    p = tl.reshape(p, [o0.shape[0], o0.shape[1], o0.shape[2], 8])
    v = tl.join(p.to(tl.int16), (p >> 16).to(tl.int16)).to(tl.float16, bitcast=True)
    return tl.reshape(v, [o0.shape[0], o0.shape[1], o0.shape[2], 16])


@triton.jit
def unit_values(w0, w1, w2, w3, C, L0, L1, L2, L3, H0, H1, H2, H3, BITS: tl.constexpr, ASM_: tl.constexpr):
    """fp16 codebook values [N, NBLK, U, 16] of the units whose words are w0..w3 [N, NBLK, U]."""
    if ASM_:
        args = [w0, w1, w2, w3, L0, L1, L2, L3, H0, H1, H2, H3]
        if BITS == 2:
            o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
                _ASM2, _CONSTRAINTS, args, dtype=(tl.int32,) * 8, is_pure=True, pack=1)
        elif BITS == 3:
            o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
                _ASM3, _CONSTRAINTS, args, dtype=(tl.int32,) * 8, is_pure=True, pack=1)
        else:
            o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
                _ASM4, _CONSTRAINTS, args, dtype=(tl.int32,) * 8, is_pure=True, pack=1)
        return pairs_to_values(o0, o1, o2, o3, o4, o5, o6, o7)
    else:
        word = w0.to(tl.int64) | (w1.to(tl.int64) << 16)
        if BITS >= 3:
            word = word | (w2.to(tl.int64) << 32)
        if BITS == 4:
            word = word | (w3.to(tl.int64) << 48)
        k = tl.arange(0, 16).to(tl.int64) * BITS
        codes = (word[:, :, :, None] >> k[None, None, None, :]) & ((1 << BITS) - 1)
        return tl.load(C + codes)


@triton.jit
def norm_f32(n16):
    return n16.to(tl.int16, bitcast=True).to(tl.float16, bitcast=True).to(tl.float32)
