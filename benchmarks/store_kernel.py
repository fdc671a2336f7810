"""Bandwidth of the fused TurboQuant store kernel (`lowbit.kernels.turbo_store`) on the GPU, and its SASS here.

    python benchmarks/store_kernel.py                      # table (needs CUDA + Triton)
    python benchmarks/store_kernel.py --format json --out store.json
    python benchmarks/store_kernel.py --sass               # no GPU: compile for sm_90a, count loop SASS

Inputs: 2 M bf16 head vectors of 128 values and 1 M of 256 (512 MB, beyond the 50 MB L2), turbo2/3/4 with
norm correction, plus one float32 row (turbo3, 128). Each setting is timed with `triton.testing.do_bench`
(median) over several (block_t, num_warps) choices. GB/s counts input plus output bytes once. Baselines in
the same run: a device-to-device copy of the bf16 input (`copy_gbps`: what the card reaches in practice)
and the torch reference `TurboQuant.quantize` on the GPU (`ratio_vs_torch` = torch ms / kernel ms).
Before timing, every choice is checked on the first 64 K vectors against the reference on the GPU: bytes
equal except float32 ties (`lowbit.kernels.store_check.check_store`, the rule the CI tests use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_attention import peak_gbps  # noqa: E402  (house helper: datasheet bandwidth by device name)

SETTINGS = [("turbo3", 128, "bfloat16"), ("turbo2", 128, "bfloat16"), ("turbo4", 128, "bfloat16"),
            ("turbo3", 256, "bfloat16"), ("turbo2", 256, "bfloat16"), ("turbo4", 256, "bfloat16"),
            ("turbo3", 128, "float32")]
TILES = [(32, 4), (64, 4), (64, 8), (128, 4), (128, 8)]  # (block_t, num_warps)
VALUES = 2**28  # 2 M vectors of 128 = 1 M of 256
CHECK_VECTORS = 2**16


def do_bench(fn, rep_ms: int) -> float:
    import triton.testing as tt

    fn()
    torch.cuda.synchronize()
    return float(tt.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


def copy_gbps(nbytes: int, rep_ms: int) -> float:
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * nbytes / do_bench(lambda: b.copy_(a), rep_ms) / 1e6


def run(args) -> dict:
    from lowbit.kernels.params import turbo_params
    from lowbit.kernels.store_check import check_store
    from lowbit.kernels.turbo_store import turbo_store
    from lowbit.quant.turboquant import TurboQuant

    name = torch.cuda.get_device_name()
    peak = peak_gbps(name)
    result = {"device": name, "torch": torch.__version__, "peak_gbps": peak,
              "copy_gbps": round(copy_gbps(VALUES * 2, args.rep_ms), 1), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python", "benchmarks/store_kernel.py", *sys.argv[1:]]), "rows": []}
    tiles = [tuple(int(v) for v in t.split("/")) for t in args.tiles] if args.tiles else TILES
    for fmt, D, dt in SETTINGS:
        if args.only and fmt not in args.only:
            continue
        dtype = getattr(torch, dt)
        tq = TurboQuant(fmt, D, norm_correction=True, seed=11, device="cuda")
        p = turbo_params(tq, "cuda")
        x = torch.randn(VALUES // D, D, device="cuda", dtype=dtype)
        x[0, 3] = float("nan")  # the slow exact path runs in one tile, as it would in a real cache
        out = torch.empty(x.shape[0], p.vector_bytes, dtype=torch.uint8, device="cuda")
        nbytes = x.numel() * x.element_size() + out.numel()
        torch_ms = do_bench(lambda: tq.quantize(x), args.rep_ms)
        for bt, w in tiles:
            try:
                ties = check_store(tq, x[:CHECK_VECTORS], turbo_store(p, x[:CHECK_VECTORS], block_t=bt, num_warps=w))
                ms = do_bench(lambda: turbo_store(p, x, out=out, block_t=bt, num_warps=w), args.rep_ms)
            except Exception as e:  # e.g. out of shared memory or registers for one tile choice
                print(f"{fmt} {D} {dt} block_t={bt} warps={w}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            gbps = nbytes / ms / 1e6
            row = {"fmt": fmt, "head_dim": D, "dtype": dt, "block_t": bt, "warps": w, "vectors": x.shape[0],
                   "ms": round(ms, 4), "gbps": round(gbps, 1), "peak_frac": round(gbps / peak, 3),
                   "ratio_vs_torch": round(torch_ms / ms, 2), "torch_ms": round(torch_ms, 4), "check_ties": ties}
            result["rows"].append(row)
            print(f"{fmt} {D} {dt} {bt}/{w}: {ms:.4f} ms {gbps:.0f} GB/s ({row['peak_frac']:.1%}) "
                  f"torch {torch_ms:.3f} ms, ties {ties}", file=sys.stderr)
        del x, out
        torch.cuda.empty_cache()
    return result


def table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"store kernel, {result['device']} (datasheet {result['peak_gbps']} GB/s, "
                    f"device copy {result['copy_gbps']} GB/s), measured")
    for c in ("format", "head_dim", "dtype", "block_t/warps", "ms", "GB/s", "of peak", "of copy", "vs torch"):
        t.add_column(c, justify="right")
    for r in result["rows"]:
        t.add_row(r["fmt"], str(r["head_dim"]), r["dtype"], f"{r['block_t']}/{r['warps']}", f"{r['ms']:.4f}",
                  f"{r['gbps']:.0f}", f"{r['peak_frac']:.1%}", f"{r['gbps'] / result['copy_gbps']:.1%}",
                  f"{r['ratio_vs_torch']:.1f}x")
    Console().print(t)


# -- SASS (no GPU) ---------------------------------------------------------------------------------
def compile_store(D: int, bits: int, block_t: int, warps: int, dtype: str = "bf16", safe: bool = True):
    """The store kernel compiled for sm_90a with the specializations the JIT gives real calls (16-byte
    aligned pointers, stride divisible by 16)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lowbit.kernels import turbo_store as ts

    k = ts._store_kernel
    blk = min(128, D)
    sig = {"X": f"*{dtype}", "OUT": "*u8", "OUT16": "*i16", "MAT": f"*{dtype}", "CENT": "*fp32", "THR": "*fp32",
           "n_rows": "i32", "stride_x": "i32", "y_scale": "fp32", "inv_scale2": "fp32"}
    const = dict(BLK=blk, NBLK=D // blk, BITS=bits, VB=(blk * bits // 8 + 2) * (D // blk), BB=blk * bits // 8 + 2,
                 NC=True, SYM=True, DOT_NATIVE=dtype != "fp32", FAST_PACK=True, SAFE=safe, BLOCK_T=block_t)
    sig.update({n: "constexpr" for n in const})
    params = list(k.arg_names)
    sig = {n: sig[n] for n in params}
    attrs = {(params.index(n),): [["tt.divisibility", 16]] for n in ("X", "OUT", "OUT16", "MAT", "CENT", "THR",
                                                                       "stride_x")}
    src = ASTSource(fn=k, signature=sig, constexprs={(params.index(n),): v for n, v in const.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def sass_report(configs) -> list[dict]:
    import re
    import subprocess
    import tempfile

    import kernel_sass as ks

    rows = []
    for D, bits, bt, w, dtype in configs:
        ck = compile_store(D, bits, bt, w, dtype, safe=False)  # the slow path sits inside the loop: count without
        cubin = ck.asm["cubin"]
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            res = subprocess.run([os.path.join(ks.BIN, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                                 text=True, check=True).stdout
        regs = int(re.search(r"REG:(\d+)", res).group(1))
        ops = ks.loop_body(ks.sass(cubin))
        row = {"head_dim": D, "bits": bits, "dtype": dtype, "block_t": bt, "warps": w, "regs": regs,
               "loop_ops_per_warp": len(ops), "thread_instr_per_value": round(len(ops) * 32 * w / (bt * D), 1),
               "classes": ks.classify(ops)}
        rows.append(row)
        print(f"D{D} turbo{bits} {dtype} {bt}/{w}: regs {regs}, {row['thread_instr_per_value']} thread-instr/value "
              + " ".join(f"{k}={v}" for k, v in sorted(row["classes"].items())), file=sys.stderr)
    return rows


SASS_CONFIGS = [(128, 3, 64, 4, "bf16"), (256, 3, 64, 4, "bf16"), (128, 2, 64, 4, "bf16"), (128, 4, 64, 4, "bf16"),
                (128, 3, 32, 4, "bf16"), (128, 3, 128, 8, "bf16"), (128, 3, 64, 4, "fp32")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=("table", "json"), default="table")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--tiles", nargs="+", metavar="BLOCK_T/WARPS", help=f"tile choices (default {TILES})")
    ap.add_argument("--only", nargs="+", choices=("turbo2", "turbo3", "turbo4"), help="formats to time")
    ap.add_argument("--rep-ms", type=int, default=200, help="do_bench time per measurement")
    ap.add_argument("--sass", action="store_true", help="no GPU: compile for sm_90a and count the loop's SASS")
    args = ap.parse_args(argv)
    if args.sass:
        result = {"sass": sass_report(SASS_CONFIGS)}
    else:
        if not torch.cuda.is_available():
            print("store_kernel.py: needs a CUDA device (or --sass)", file=sys.stderr)
            return 2
        torch.manual_seed(0)
        result = run(args)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)
    if args.format == "json":
        print(json.dumps(result, indent=1))
    elif not args.sass:
        table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
