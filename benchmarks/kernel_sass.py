"""Compile the decode kernel for sm_90a on this machine (no GPU) and count the SASS of its main loop.

What it prints per configuration: registers per thread, spills, and the thread-instructions per packed code
in the loop body (the longest backward branch), split by opcode class. Costs no device time: it runs
Triton's own ptxas and cuobjdump. Usage: python benchmarks/kernel_sass.py [--dump FILE] [--cuda]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lowbit.kernels import turbo_attention as ta

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def compile_stage1(kernel, D: int, group: int, bits: int, block_n: int, warps: int, extra=None):
    """(compiled kernel, codes per loop iteration) for one shape."""
    blk = min(128, D)
    nblk = D // blk
    bb2 = (blk * bits // 8 + 2) // 2
    sig = {"Q": "*bf16", "K": "*i16", "V": "*i16", "RKT": "*fp16", "SK": "*fp32", "CK": "*fp16", "CV": "*fp16",
           "OP": "*fp32", "ML": "*fp32", "T": "i32", "split_len": "i32"}
    sig.update({s: "i32" for s in ("sqb", "sqh", "sql", "skb", "skh", "skt", "svb", "svh", "svt")})
    sig["qk_scale"] = "fp32"
    sig.update({f"{kv}{lh}{i}": "i32" for kv in "KV" for lh in "LH" for i in range(4)})
    const = dict(HKV=2, GROUP=group, LQ=1, M=max(16, group), BLK=blk, NBLK=nblk, KBITS=bits, VBITS=bits,
                 KBB2=bb2, VBB2=bb2, BLOCK_N=block_n, HADAMARD=True, ASM_=True, PREFETCH=False, KQ8=False)
    const.update(extra or {})
    sig.update({k: "constexpr" for k in const})
    sig["NSPLIT"] = "i32"
    params = list(kernel.arg_names)
    sig = {k: sig[k] for k in params if k in sig}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(params.index(k),): v for k, v in const.items()})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    return ck, block_n * D * 2


def sass(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout


def registers(cubin: bytes) -> int:
    """Registers per thread of the (first) kernel in a cubin, from cuobjdump's resource usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return int(re.search(r"REG:(\d+)", res).group(1))


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def loop_body(text: str) -> list[str]:
    """Opcodes of the longest backward-branch region."""
    ins = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _LINE.finditer(text)]
    addr = {a: i for i, (a, _, _) in enumerate(ins)}
    best = (0, 0)
    for i, (a, op, rest) in enumerate(ins):
        if op.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", rest)
            if t and int(t.group(1), 16) < a and int(t.group(1), 16) in addr:
                j = addr[int(t.group(1), 16)]
                if i - j > best[1] - best[0]:
                    best = (j, i + 1)
    return [op for _, op, _ in ins[best[0]:best[1]]]


CLASSES = [("mma", ("HMMA", "HGMMA", "WARPGROUP", "WARPSYNC")), ("global", ("LDG", "STG", "LDGSTS", "LDGDEPBAR", "UBLKCP", "SYNCS")),
           ("shared", ("LDS", "STS", "LDSM", "STSM")), ("barrier", ("BAR", "DEPBAR")),
           ("prmt/lop", ("PRMT", "LOP3", "SHF", "IMAD", "IADD3", "LEA", "SGXT", "BMSK")),
           ("fp32", ("FADD", "FMUL", "FFMA", "FMNMX", "MUFU", "FSETP", "FSEL")), ("cvt/move", ("F2F", "F2FP", "MOV", "I2F", "SEL", "SHFL", "ISETP"))]


def classify(ops: list[str]) -> dict[str, int]:
    out = collections.Counter()
    for op in ops:
        base = op.split(".")[0]
        for name, prefixes in CLASSES:
            if base.startswith(prefixes):
                out[name] += 1
                break
        else:
            out["other"] += 1
    return dict(out)


def report(name, ck, codes, warps, dump=None):
    text = sass(ck.asm["cubin"])
    if dump:
        with open(dump, "a") as f:
            f.write(f"\n##### {name}\n{text}")
    ops = loop_body(text)
    per_code = len(ops) * 32 * warps / codes
    cls = classify(ops)
    meta = ck.metadata
    print(f"{name:40s} regs {registers(ck.asm['cubin']):>4} smem {meta.shared:6d} "
          f"loop {len(ops):5d} ops/warp  {per_code:5.2f} thr-ins/code  "
          + " ".join(f"{k}={v}" for k, v in sorted(cls.items())))


def cuda_decode_report() -> None:
    """The CUDA decode kernel (`lowbit.kernels.cuda_decode.SOURCE`): NVRTC (ctypes, the library next to torch
    or the pip package nvidia-cuda-nvrtc-cu12) to PTX, Triton's ptxas to sm_90a, then registers and the loop."""
    import ctypes

    from lowbit.kernels import cuda_decode as cd

    drv = cd._Driver.__new__(cd._Driver)  # only its compiler half: no GPU here
    drv.ct, drv.nvrtc = ctypes, ctypes.CDLL(cd._find_nvrtc())
    ptx, lowered = drv._compile("--gpu-architecture=compute_90a")
    with tempfile.TemporaryDirectory() as d:
        # ptxas may be older than NVRTC's PTX ISA; the kernel uses nothing newer than 8.0
        text = re.sub(rb"^\.version \d+\.\d+", b".version 8.0", ptx, count=1, flags=re.M)
        with open(os.path.join(d, "k.ptx"), "wb") as f:
            f.write(text)
        res = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", os.path.join(d, "k.ptx"), "-o",
                              os.path.join(d, "k.cubin")], capture_output=True, text=True, check=True).stderr
        with open(os.path.join(d, "k.cubin"), "rb") as f:
            text = sass(f.read())
    regs = dict(re.findall(r"Compiling entry function '(\S+)'.*?Used (\d+) registers", res, flags=re.S))
    for name, low in lowered.items():
        sym = low.value.decode()
        sec = text[text.index("Function : " + sym):]
        nxt = sec.find("Function :", 10)
        ops = loop_body(sec if nxt < 0 else sec[:nxt])
        D = int(re.search(r"<(\d+)", name).group(1))
        codes = 16 * D * 2  # one 16-token step of K and V, per warp
        print(f"{name:32s} regs {regs.get(sym, '?'):>4} loop {len(ops):5d} ops/lane per 16-token step "
              f"({len(ops) * 32 / codes:.2f} thr-ins/code, rare paths included) " + " ".join(f"{k}={v}" for k, v in sorted(classify(ops).items())))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", help="append the full SASS here")
    ap.add_argument("--cuda", action="store_true", help="the CUDA decode kernel (NVRTC) instead of the Triton ones")
    args = ap.parse_args(argv)
    if args.cuda:
        cuda_decode_report()
        return 0
    for D, group, bits, bn, w in [(256, 16, 3, 64, 4), (256, 16, 3, 128, 4), (256, 6, 3, 128, 4), (128, 4, 3, 128, 4)]:
        ck, codes = compile_stage1(ta._stage1, D, group, bits, bn, w)
        report(f"D{D} G{group} turbo{bits} N{bn} w{w}", ck, codes, w, args.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())

