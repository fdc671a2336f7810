"""Decode attention over a packed KV cache (TurboQuant or q8_0 keys, TurboQuant values) vs bf16 SDPA (GPU; the
store kernel: store_kernel.py).

    python benchmarks/decode_attention.py --format json          # full table (needs CUDA + Triton)
    python benchmarks/decode_attention.py --check                # correctness on the real shapes
    python benchmarks/decode_attention.py --profile-one qwen3.5-122b 32768 32 turbo3/turbo3   # for ncu

Time per decode step of one attention layer (LQ = 1 new token), median of CUDA-graph replays
(triton.testing.do_bench_cudagraph); every timed call reads a different copy of its inputs, so that the
working set exceeds the 50 MB L2 (`copies` column). `backend`: which kernel `turbo_decode_attention` picked (the CUDA
split kernel for K turbo3/turbo4/q8_0 with V turbo3/turbo4, else Triton); `triton_ms` times the Triton kernel on the
same caches (`--skip-triton` leaves it out). K/V settings: "turbo3/turbo3", "q8_0/turbo3" (q8_0 keys as the cache
stores them, rotated or not by the spec), ... Baselines, same run: torch SDPA on bf16 K/V with each
backend (flash, efficient, cuDNN, and math), each both as enable_gqa and as "packed GQA" (the group's
query heads as query rows of their KV head, which is exact for one new token); the fastest is the
baseline. Also dequantize-then-SDPA (Triton dequantize to bf16, then the fastest SDPA backend).
`gbps` = bytes of K/V the kernel must read (packed bytes for turbo, bf16 bytes for SDPA) / time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

SHAPES = {  # name: (query heads, KV heads, head_dim)
    "qwen3.5-122b": (32, 2, 256),
    "qwen3.5-27b": (24, 4, 256),
    "llama-3.1-8b": (32, 8, 128),
}
PEAK_GBPS = {"H100 80GB HBM3": 3350.0, "H100": 3350.0, "H200": 4800.0}  # vendor datasheets
L2_BYTES = 50 * 2**20
ALTS = ((32, 4, False), (64, 4, False), (64, 8, False), (128, 4, False), (128, 8, False), (64, 4, True))  # --alts


def emit_json(result: dict, out: str | None) -> str:
    """The result as JSON text, also written to `out` when given (lowbit's safe writer: whole or not at all;
    a rerun refreshes the file, so it replaces an existing one, never a link or a device)."""
    text = json.dumps(result, indent=1)
    if out:
        from lowbit.safe_write import write_text

        write_text(out, text, force=True)
    return text


def peak_gbps(name: str) -> float:
    for k, v in PEAK_GBPS.items():
        if k in name:
            return v
    return float("nan")


def bench(fn, rep_ms: int = 60) -> float:
    import triton.testing as tt

    fn()
    torch.cuda.synchronize()
    try:
        return float(tt.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    except Exception:  # some SDPA backends refuse capture
        return float(tt.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median"))


def copy_gbps() -> float:
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), rep_ms=100)
    return 2 * a.numel() / ms / 1e6


def codecs(kv: str, D: int):
    from lowbit.quant.kv_baselines import make_codec
    from lowbit.quant.turboquant import TurboQuant

    kf, vf = kv.split("/")
    k = make_codec(kf, D, seed=11, device="cuda", keys=True) if kf.startswith("q8_0") else \
        TurboQuant(kf, D, norm_correction=True, seed=11, device="cuda")
    return k, TurboQuant(vf, D, norm_correction=True, seed=12, device="cuda")


def make_cache(B, HKV, T, D, kc, vc, copies):
    """Packed K/V copies built by the store kernel from random bf16 vectors (chunked to bound memory)."""
    from lowbit import kernels

    out = []
    for _ in range(copies):
        kp = torch.empty(B, HKV, T, kc.vector_bytes, dtype=torch.uint8, device="cuda")
        vp = torch.empty(B, HKV, T, vc.vector_bytes, dtype=torch.uint8, device="cuda")
        step = max(1, 2**28 // (HKV * T * D * 2))
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            kernels.store(kc, torch.randn(b1 - b0, HKV, T, D, device="cuda", dtype=torch.bfloat16), out=kp[b0:b1])
            kernels.store(vc, torch.randn(b1 - b0, HKV, T, D, device="cuda", dtype=torch.bfloat16), out=vp[b0:b1])
        out.append((kp, vp))
    return out


def sdpa_variants():
    from torch.nn.attention import SDPBackend

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return names


def sdpa_call(backend, form, q, k, v, scale=None):
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    B, Hq, _, D = q.shape
    HKV = k.shape[1]
    with sdpa_kernel([backend]):
        if form == "gqa":
            return sdpa(q, k, v, enable_gqa=True, scale=scale)
        return sdpa(q.reshape(B, HKV, Hq // HKV, D), k, v, scale=scale).view(B, Hq, 1, D)  # packed GQA


def best_sdpa(q, kvs, skip_math=True):
    """Fastest (name, ms) over SDPA backends x forms, cycling over the bf16 copies in kvs."""
    results = {}
    for name, backend in sdpa_variants().items():
        if skip_math and name == "math":
            continue
        for form in ("gqa", "packed"):
            try:
                sdpa_call(backend, form, q, *kvs[0])
                torch.cuda.synchronize()
            except Exception:
                continue
            ms = bench(lambda: [sdpa_call(backend, form, q, k, v) for k, v in kvs]) / len(kvs)
            results[f"{name}/{form}"] = ms
    best = min(results, key=results.get)
    return best, results[best], results


def run_row(shape, T, B, kv_list, args, peak):
    from lowbit import kernels
    from lowbit.kernels import cuda_decode
    from lowbit.kernels.params import key_params, sm_count, turbo_params
    from lowbit.kernels.turbo_attention import PREFETCH, default_config, turbo_decode_attention

    Hq, HKV, D = SHAPES[shape]
    bf16_bytes = 2 * B * HKV * T * D * 2
    free = torch.cuda.mem_get_info()[0]
    if 2.3 * bf16_bytes > free:
        return [{"shape": shape, "context": T, "batch": B, "skipped": f"needs ~{2.3 * bf16_bytes / 1e9:.0f} GB"}]
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    ncopy = max(1, min(16, math.ceil(4 * L2_BYTES / bf16_bytes)))
    kvs = [(torch.randn(B, HKV, T, D, device="cuda", dtype=torch.bfloat16),
            torch.randn(B, HKV, T, D, device="cuda", dtype=torch.bfloat16)) for _ in range(ncopy)]
    base_name, base_ms, all_sdpa = best_sdpa(q, kvs)
    backend = sdpa_variants()[base_name.split("/")[0]]
    form = base_name.split("/")[1]
    del kvs
    torch.cuda.empty_cache()
    rows = []
    for kv in kv_list:
        kc, vc = codecs(kv, D)
        pk, pv = key_params(kc, "cuda"), turbo_params(vc, "cuda")
        packed_bytes = B * HKV * T * (kc.vector_bytes + vc.vector_bytes)
        copies = max(1, min(64, math.ceil(4 * L2_BYTES / packed_bytes)))
        caches = make_cache(B, HKV, T, D, kc, vc, copies)
        ms = bench(lambda: [turbo_decode_attention(q, kp, vp, pk, pv) for kp, vp in caches]) / copies
        used = "cuda" if cuda_decode.supported(pk, pv, Hq // HKV, 1, *caches[0]) and cuda_decode.available("cuda") \
            else "triton"
        triton_ms = ms if used == "triton" else None if args.skip_triton else bench(lambda: [turbo_decode_attention(
            q, kp, vp, pk, pv, backend="triton") for kp, vp in caches]) / copies
        alts = {}
        for bn, nw, pf in (ALTS if args.alts else ()):  # other tile/warp/prefetch choices, same caches
            try:
                alts[f"{bn}/{nw}/{int(pf)}"] = round(bench(lambda: [turbo_decode_attention(
                    q, kp, vp, pk, pv, block_n=bn, num_warps=nw, prefetch=pf) for kp, vp in caches]) / copies, 5)
            except Exception as e:  # out of registers / shared memory
                print(f"alt {bn}/{nw}/{pf}: {type(e).__name__}", file=sys.stderr)
        eager = None
        if args.eager:
            import triton.testing as tt
            eager = float(tt.do_bench(lambda: turbo_decode_attention(q, *caches[0], pk, pv), return_mode="median"))
        kp, vp = caches[0]
        deq_ms = None
        if not args.skip_dequant and 2 * bf16_bytes + packed_bytes < 0.8 * torch.cuda.mem_get_info()[0]:
            def deq():
                k = kernels.dequantize(kc, kp, torch.bfloat16)
                v = kernels.dequantize(vc, vp, torch.bfloat16)
                return sdpa_call(backend, form, q, k, v)
            deq_ms = bench(deq)
        gbps = packed_bytes / ms / 1e6
        rows.append({
            "shape": shape, "context": T, "batch": B, "kv": kv, "ms": round(ms, 5), "gbps": round(gbps, 1),
            "peak_frac": round(gbps / peak, 3), "baseline": f"sdpa-{base_name}", "baseline_ms": round(base_ms, 5),
            "baseline_gbps": round(bf16_bytes / base_ms / 1e6, 1), "speedup": round(base_ms / ms, 2),
            "dequant_sdpa_ms": None if deq_ms is None else round(deq_ms, 5),
            "eager_ms": None if eager is None else round(eager, 5),
            "backend": used, "triton_ms": None if triton_ms is None else round(triton_ms, 5),
            "triton_speedup": None if triton_ms is None else round(base_ms / triton_ms, 2),
            "config": (f"split {cuda_decode.split_length(B * HKV, T, sm_count(str(q.device)))}" if used == "cuda" else
                       "{}/{}/{}".format(*default_config(B, HKV, T, D)[::2], int(PREFETCH))), "alt_ms": alts,
            "sdpa_all_ms": {k: round(v, 5) for k, v in all_sdpa.items()}, "copies": copies,
        })
        del caches, kp, vp
        torch.cuda.empty_cache()
    return rows


def check(args) -> list[dict]:
    """Real shapes, batch 1-2: fused kernel vs reference (dequantize with the reference, float32 attention).
    The store kernel's bytes are checked by benchmarks/store_kernel.py (lowbit.kernels.store_check's rule)."""
    from lowbit import kernels
    from lowbit.kernels import reference
    from lowbit.kernels.params import key_params, turbo_params
    from lowbit.kernels.turbo_attention import turbo_decode_attention

    out = []
    for shape, (Hq, HKV, D) in SHAPES.items():
        for T in (8192, 32768):
            for kv in args.kv:
                kc, vc = codecs(kv, D)
                pk, pv = key_params(kc, "cuda"), turbo_params(vc, "cuda")
                k = torch.randn(2, HKV, T, D, device="cuda", dtype=torch.bfloat16) * 1.5
                v = torch.randn(2, HKV, T, D, device="cuda", dtype=torch.bfloat16)
                q = torch.randn(2, Hq, 1, D, device="cuda", dtype=torch.bfloat16) * 2
                kp, vp = kernels.store(kc, k), kernels.store(vc, v)
                got = turbo_decode_attention(q, kp, vp, pk, pv).float()
                ref = reference.attention(q.float(), kernels.dequantize(kc, kp), kernels.dequantize(vc, vp))
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                out.append({"check": "attention", "shape": shape, "context": T, "kv": kv, "max_rel_err": err,
                            "finite": bool(torch.isfinite(got).all())})
    return out


def sweep(args) -> list[dict]:
    """Tile/split/warp choices for a few rows (to pick defaults)."""
    from lowbit.kernels.params import turbo_params
    from lowbit.kernels.turbo_attention import default_config, turbo_decode_attention

    out = []
    for shape, T, B in (("qwen3.5-122b", 32768, 1), ("qwen3.5-122b", 32768, 32), ("llama-3.1-8b", 32768, 8),
                        ("qwen3.5-27b", 131072, 8)):
        Hq, HKV, D = SHAPES[shape]
        kc, vc = codecs("turbo3/turbo3", D)
        pk, pv = turbo_params(kc, "cuda"), turbo_params(vc, "cuda")
        packed = B * HKV * T * (kc.vector_bytes + vc.vector_bytes)
        copies = max(1, min(64, math.ceil(4 * L2_BYTES / packed)))
        caches = make_cache(B, HKV, T, D, kc, vc, copies)
        q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
        bn0, sp0, _ = default_config(B, HKV, T, D)
        for bn in (32, 64):
            for nw in (4, 8):
                for mult in (0.5, 1, 2):
                    sp = max(1, int(sp0 * mult))
                    try:
                        ms = bench(lambda: [turbo_decode_attention(q, kp, vp, pk, pv, block_n=bn, splits=sp, num_warps=nw)
                                            for kp, vp in caches], rep_ms=20) / copies
                    except Exception as e:  # out of shared memory / registers
                        ms = float("nan")
                        print(f"sweep {shape} {T} {B} bn={bn} nw={nw}: {type(e).__name__}", file=sys.stderr)
                    out.append({"sweep": shape, "context": T, "batch": B, "block_n": bn, "num_warps": nw, "splits": sp,
                                "ms": round(ms, 5), "gbps": round(packed / ms / 1e6, 1)})
        del caches
        torch.cuda.empty_cache()
    return out


def profile_one(shape, T, B, kv):
    from lowbit.kernels.params import key_params, turbo_params
    from lowbit.kernels.turbo_attention import turbo_decode_attention

    Hq, HKV, D = SHAPES[shape]
    kc, vc = codecs(kv, D)
    pk, pv = key_params(kc, "cuda"), turbo_params(vc, "cuda")
    (kp, vp), = make_cache(B, HKV, T, D, kc, vc, 1)
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        turbo_decode_attention(q, kp, vp, pk, pv)
    torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=("table", "json"), default="table")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--contexts", nargs="+", type=int, default=[8192, 32768, 131072])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--kv", nargs="+", default=["turbo3/turbo3", "turbo4/turbo3"])
    ap.add_argument("--check", action="store_true", help="correctness on the real shapes, then exit")
    ap.add_argument("--sweep", action="store_true", help="tile/split/warp sweep, then exit")
    ap.add_argument("--eager", action="store_true", help="also time one eager call (launch overhead included)")
    ap.add_argument("--alts", action="store_true", help="also time other (block_n, num_warps, prefetch) choices")
    ap.add_argument("--skip-triton", action="store_true", help="do not time the Triton kernel where CUDA runs")
    ap.add_argument("--skip-dequant", action="store_true", help="do not time dequantize-then-SDPA")
    ap.add_argument("--profile-one", nargs=4, metavar=("SHAPE", "CONTEXT", "BATCH", "KV"))
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_attention.py: needs a CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    if args.profile_one:
        s, t, b, kv = args.profile_one
        profile_one(s, int(t), int(b), kv)
        return 0
    name = torch.cuda.get_device_name()
    peak = peak_gbps(name)
    result = {"device": name, "torch": torch.__version__, "peak_gbps_datasheet": peak,
              "copy_gbps_measured": round(copy_gbps(), 1), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python", "benchmarks/decode_attention.py", *(argv or sys.argv[1:])]),
              "commit": os.environ.get("LOWBIT_COMMIT"), "rows": []}
    if args.check:
        result["rows"] = check(args)
    elif args.sweep:
        result["rows"] = sweep(args)
    else:
        for shape in args.shapes:
            for T in args.contexts:
                for B in args.batches:
                    t0 = time.time()
                    rows = run_row(shape, T, B, args.kv, args, peak)
                    result["rows"].extend(rows)
                    if args.out:  # progress survives a timeout
                        with open(args.out + ".partial", "a") as f:
                            f.writelines(json.dumps(r) + "\n" for r in rows)
                    for r in rows:
                        print(f"{shape:13s} T={T:6d} B={B:2d} {r.get('kv', '-'):14s} ms={r.get('ms')} base={r.get('baseline_ms')} "
                              f"x{r.get('speedup')} {r.get('gbps')}GB/s deq={r.get('dequant_sdpa_ms')} ({time.time() - t0:.0f}s)",
                              file=sys.stderr, flush=True)
    text = emit_json(result, args.out)
    if args.format == "json":
        print(text)
    else:
        from rich.console import Console
        from rich.table import Table

        rows = result["rows"]
        t = Table(title=f"{name} (datasheet {peak:.0f} GB/s, copy {result['copy_gbps_measured']} GB/s)")
        keys = list(dict.fromkeys(k for r in rows for k in r if k != "sdpa_all_ms"))
        for k in keys:
            t.add_column(k)
        for r in rows:
            t.add_row(*[str(r.get(k, "")) for k in keys])
        Console(width=250).print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
