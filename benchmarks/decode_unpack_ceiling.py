"""What unpacking the codes costs the CUDA decode kernel: an experiment, not a kernel.

    python benchmarks/decode_unpack_ceiling.py --format json --shapes llama-3.1-8b qwen3.5-27b --contexts 32768 131072
    python benchmarks/decode_unpack_ceiling.py --sass     # no GPU: the variant's loop, SASS per 16-token step

The variant is `cuda_decode.SOURCE` with one function changed: `turbo_unit` (16 turbo codes -> 8 fp16 pairs: the
spreading of 3-bit codes into nibbles and the `prmt` codebook lookups) becomes one AND of a loaded word per pair.
Everything else is the shipped kernel: the same bytes staged by `cp.async`, the same MMAs, norms, online softmax
and split merge. Its output is meaningless; its time says how fast the kernel would be if unpacking cost about
nothing, i.e. how much of the gap to the memory bound the unpacking is (docs/kernels.md §R4b, §R9). Timed side by
side with the shipped kernel on the same caches and with the fastest bf16 SDPA of the same run
(`decode_attention.py`'s method: median of CUDA-graph replays over copies larger than L2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode_attention as da  # noqa: E402  (benchmarks/: caches, SDPA baseline, timing)

CHEAP_UNIT = """template <int F>
__device__ __forceinline__ void turbo_unit(const unsigned char* p, const u32* T, u32* out) {
    // EXPERIMENT (decode_unpack_ceiling.py): the unit's words are read, the lookup is replaced by a mask
    const u16* q = (const u16*)p;
    const u32 x = (u32)q[0] | ((u32)q[F - 1] << 16);
#pragma unroll
    for (int m = 0; m < 8; m++) out[m] = x & (0x3BFF3BFFu - (u32)m);  // finite fp16 pairs, one LOP each
}
"""


def variant_source() -> str:
    from lowbit.kernels import cuda_decode

    src = cuda_decode.SOURCE
    start = src.index("template <int F>\n__device__ __forceinline__ void turbo_unit(")
    end = src.index("// Unit i (16 values) of lane c")
    return src[:start] + CHEAP_UNIT + "\n" + src[end:]


def variant_driver(device, names):
    """A second NVRTC driver whose kernels `names` are compiled from the variant source (the shipped one is
    untouched)."""
    from lowbit.kernels import cuda_decode

    drv = cuda_decode._Driver(device)
    shipped = cuda_decode.SOURCE
    cuda_decode.SOURCE = variant_source()
    try:
        for name in names:  # compile now, while the module holds the variant
            drv.function(name)
    finally:
        cuda_decode.SOURCE = shipped
    return drv


def run_row(shape, T, B, kv, variant):
    import torch

    from lowbit.kernels import cuda_decode
    from lowbit.kernels.params import key_params, turbo_params
    from lowbit.kernels.turbo_attention import turbo_decode_attention

    Hq, HKV, D = da.SHAPES[shape]
    bf16_bytes = 2 * B * HKV * T * D * 2
    if 2.3 * bf16_bytes > torch.cuda.mem_get_info()[0]:
        return {"shape": shape, "context": T, "batch": B, "kv": kv, "skipped": "bf16 copies do not fit"}
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    ncopy = max(1, min(16, math.ceil(4 * da.L2_BYTES / bf16_bytes)))
    kvs = [(torch.randn(B, HKV, T, D, device="cuda", dtype=torch.bfloat16),
            torch.randn(B, HKV, T, D, device="cuda", dtype=torch.bfloat16)) for _ in range(ncopy)]
    base_name, base_ms, _ = da.best_sdpa(q, kvs)
    del kvs
    torch.cuda.empty_cache()
    kc, vc = da.codecs(kv, D)
    pk, pv = key_params(kc, "cuda"), turbo_params(vc, "cuda")
    packed = B * HKV * T * (kc.vector_bytes + vc.vector_bytes)
    copies = max(1, min(64, math.ceil(4 * da.L2_BYTES / packed)))
    caches = da.make_cache(B, HKV, T, D, kc, vc, copies)
    if not cuda_decode.supported(pk, pv, Hq // HKV, 1, *caches[0]):
        return {"shape": shape, "context": T, "batch": B, "kv": kv, "skipped": "not a CUDA-kernel setting"}

    def step():
        return [turbo_decode_attention(q, kp, vp, pk, pv) for kp, vp in caches]

    shipped_ms = da.bench(step) / copies
    shipped_driver = cuda_decode._driver
    cuda_decode._driver = lambda index: variant
    try:
        variant_ms = da.bench(step) / copies
    finally:
        cuda_decode._driver = shipped_driver
    caches.clear()  # free them before the next row (the closure keeps the list)
    torch.cuda.empty_cache()
    return {"shape": shape, "context": T, "batch": B, "kv": kv, "baseline": f"sdpa-{base_name}",
            "baseline_ms": round(base_ms, 5), "ms": round(shipped_ms, 5), "cheap_unpack_ms": round(variant_ms, 5),
            "speedup": round(base_ms / shipped_ms, 2), "cheap_unpack_speedup": round(base_ms / variant_ms, 2),
            "packed_gbps": round(packed / shipped_ms / 1e6, 1),
            "cheap_unpack_packed_gbps": round(packed / variant_ms / 1e6, 1)}


def sass() -> int:
    """The variant's loop by SASS class, beside the shipped kernel's (kernel_sass.py --cuda, no GPU)."""
    import kernel_sass

    from lowbit.kernels import cuda_decode

    print("shipped kernel:")
    kernel_sass.cuda_decode_report()
    shipped = cuda_decode.SOURCE
    cuda_decode.SOURCE = variant_source()
    try:
        print("\nvariant (turbo_unit = one AND per fp16 pair):")
        kernel_sass.cuda_decode_report()
    finally:
        cuda_decode.SOURCE = shipped
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama-3.1-8b", "qwen3.5-27b"], choices=list(da.SHAPES))
    ap.add_argument("--contexts", nargs="+", type=int, default=[32768, 131072])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--kv", nargs="+", default=["turbo3/turbo3"])
    ap.add_argument("--format", choices=("table", "json"), default="table")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--sass", action="store_true", help="no GPU: compare the loops' SASS, then exit")
    args = ap.parse_args(argv)
    if args.sass:
        return sass()
    import torch

    if not torch.cuda.is_available():
        print("decode_unpack_ceiling.py: needs a CUDA device (or --sass)", file=sys.stderr)
        return 2
    from lowbit.kernels import cuda_decode

    names = {cuda_decode.kernel_name(da.SHAPES[s][2], *kv.split("/")) for s in args.shapes for kv in args.kv}
    variant = variant_driver(torch.device("cuda", torch.cuda.current_device()), sorted(names))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.date.today().isoformat(), "commit": os.environ.get("LOWBIT_COMMIT"),
              "command": "python benchmarks/decode_unpack_ceiling.py " + " ".join(argv or sys.argv[1:]), "rows": []}
    for shape in args.shapes:
        for T in args.contexts:
            for B in args.batches:
                for kv in args.kv:
                    r = run_row(shape, T, B, kv, variant)
                    result["rows"].append(r)
                    print(" ".join(f"{k}={v}" for k, v in r.items()), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.format == "json":
        print(text)
    else:
        print(f"{result['device']} | torch {result['torch']} | lowbit {result['commit'] or '(LOWBIT_COMMIT unset)'} | "
              f"{result['date']}; speedups against the fastest bf16 SDPA of this run")
        for r in result["rows"]:
            if "skipped" not in r:
                print(f"{r['shape']:13s} T={r['context']:6d} B={r['batch']:2d} {r['kv']:14s} "
                      f"bf16 {r['baseline_ms']:.4f} shipped {r['ms']:.4f} ({r['speedup']}x) "
                      f"cheap unpack {r['cheap_unpack_ms']:.4f} ({r['cheap_unpack_speedup']}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
