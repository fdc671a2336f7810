"""Compile-time variants of the CUDA decode kernel (`lowbit.kernels.cuda_decode.VARIANTS`), side by side (GPU).

    python benchmarks/cuda_decode_variants.py --format json --out variants.json

Per row: the fastest bf16 SDPA baseline (as `decode_attention.py`), then each variant of the CUDA split
kernel on the same packed turbo3 caches: time per decode step (median of CUDA-graph replays over copies of
the cache that exceed L2), speedup over the baseline, and the max relative error against the reference
(dequantize + float32 attention) on the first copy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decode_attention as da  # noqa: E402  (shapes, baseline, cache builder, timing)

ROWS = [("qwen3.5-122b", 32768, 1), ("qwen3.5-122b", 32768, 8), ("qwen3.5-122b", 32768, 32),
        ("qwen3.5-27b", 32768, 8), ("llama-3.1-8b", 32768, 8), ("llama-3.1-8b", 131072, 8)]


def run(rows, variants) -> list[dict]:
    from lowbit.kernels import cuda_decode, reference
    from lowbit.kernels.params import turbo_params
    from lowbit.kernels.turbo_attention import turbo_decode_attention

    out = []
    for shape, T, B in rows:
        Hq, HKV, D = da.SHAPES[shape]
        kc, vc = da.codecs("turbo3/turbo3", D)
        pk, pv = turbo_params(kc, "cuda"), turbo_params(vc, "cuda")
        q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
        bf16_bytes = 2 * B * HKV * T * D * 2
        ncopy = max(1, min(16, math.ceil(4 * da.L2_BYTES / bf16_bytes)))
        kvs = [(torch.randn(B, HKV, T, D, device="cuda", dtype=torch.bfloat16),
                torch.randn(B, HKV, T, D, device="cuda", dtype=torch.bfloat16)) for _ in range(ncopy)]
        base_name, base_ms, _ = da.best_sdpa(q, kvs)
        del kvs
        torch.cuda.empty_cache()
        packed = B * HKV * T * (kc.vector_bytes + vc.vector_bytes)
        copies = max(1, min(64, math.ceil(4 * da.L2_BYTES / packed)))
        caches = da.make_cache(B, HKV, T, D, kc, vc, copies)
        kp0, vp0 = caches[0]
        sub = min(B, 2)  # reference on two sequences (float32 on the GPU)
        ref = reference.decode_attention(q[:sub].float(), kp0[:sub], vp0[:sub], kc, vc).float()
        row = {"shape": shape, "context": T, "batch": B, "baseline": f"sdpa-{base_name}", "baseline_ms": round(base_ms, 5),
               "variants": {}}
        for v in variants:
            cuda_decode.VARIANT = v
            got = turbo_decode_attention(q, kp0, vp0, pk, pv, backend="cuda")[:sub].float()
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            ms = da.bench(lambda: [turbo_decode_attention(q, kp, vp, pk, pv, backend="cuda") for kp, vp in caches]) / copies
            row["variants"][str(v)] = {"config": cuda_decode.VARIANTS[v][D], "ms": round(ms, 5),
                                       "speedup": round(base_ms / ms, 2), "max_rel_err": float(f"{err:.2e}")}
        cuda_decode.VARIANT = 0
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
        del caches
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=("table", "json"), default="table")
    ap.add_argument("--variants", nargs="+", type=int, default=None)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_decode_variants.py: needs a CUDA device", file=sys.stderr)
        return 2
    from lowbit.kernels import cuda_decode

    torch.manual_seed(0)
    variants = args.variants or sorted(cuda_decode.VARIANTS)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python", "benchmarks/cuda_decode_variants.py", *(argv or sys.argv[1:])]),
              "rows": run(ROWS, variants)}
    text = da.emit_json(result, args.out)
    if args.format == "json":
        print(text)
    else:
        for r in result["rows"]:
            cells = " ".join(f"v{k}={v['ms']}ms x{v['speedup']} err {v['max_rel_err']}" for k, v in r["variants"].items())
            print(f"{r['shape']:13s} T={r['context']:6d} B={r['batch']:2d} base={r['baseline_ms']} ({r['baseline']}) {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
