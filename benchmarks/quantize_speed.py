"""Time lowbit's Q1_0 quantizer against gguf's own Q4_0 quantizer on the same real tensors.

    python benchmarks/quantize_speed.py [--model gemma3-270m] [--repeat 3]

Every 2-D weight of the model (the 262k x 640 embedding included, i.e. a --pure Q1_0 conversion:
268M weights) is dequantized to float32 first (not timed); then each quantizer runs over all of
them. Prints the best-of-N wall time of each, the ratio and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from gguf import GGMLQuantizationType, quants

    from lowbit.eval import lm
    from lowbit.quant import q1_0

    tensors = [w for w in lm.gguf_weights(args.model).values() if w.ndim == 2]
    n = sum(w.size for w in tensors)

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for w in tensors:
                fn(w)
            times.append(time.perf_counter() - t0)
        return min(times)

    t_q1 = best(q1_0.quantize)
    t_q4 = best(lambda w: quants.quantize(w, GGMLQuantizationType.Q4_0))
    print(f"model            {args.model}: {len(tensors)} matrices, {n:,} weights")
    print(f"lowbit Q1_0      {t_q1:8.2f} s  ({n / t_q1 / 1e6:7.1f} M weights/s)")
    print(f"gguf   Q4_0      {t_q4:8.2f} s  ({n / t_q4 / 1e6:7.1f} M weights/s)")
    print(f"ratio            Q4_0 / Q1_0 time = {t_q4 / t_q1:.1f}x")
    print(f"machine          {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}; best of {args.repeat}")


if __name__ == "__main__":
    main()
