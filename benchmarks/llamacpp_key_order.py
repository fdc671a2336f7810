"""Does the order of a key's elements explain lowbit's and llama.cpp's unrotated q4_0 apart? (SmolLM2, llama.cpp protocol)

convert_hf_to_gguf permutes a llama-architecture model's Q/K rows so that rotary pairs sit side by side
(llama.cpp's "normal" RoPE); lowbit undoes the permutation to run transformers' half-split RoPE. So the same
key is [x0, x32, x1, x33, ...] in llama.cpp's cache and [x0, x1, ..., x63] in lowbit's, and a 32-value ggml block
groups different elements. This runs lowbit's protocol with each cache storing K in transformers' order (as lowbit
does) and in GGUF's order (a cache that permutes K before storing it and back after loading), and prints
ln(PPL/PPL_f16), KLD and same-top for each, to set beside llama.cpp's per-chunk figures for the same windows.

    nice -n 10 python benchmarks/llamacpp_key_order.py --windows 8 --out docs/quality_results/llamacpp_key_order_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8, help="windows of 512 (the first N, as llama-perplexity's)")
    ap.add_argument("--kv", default="q4_0:norot,q4_0,q8_0:norot")
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    from lowbit.cache import QuantizedKVCache
    from lowbit.eval import lm, protocol

    class GGUFOrder(QuantizedKVCache):
        """Stores K as llama.cpp holds it: rotary pairs (i, i + d/2) side by side."""

        def update(self, key_states, value_states, layer_idx, *a, **kw):
            d = key_states.shape[-1]
            perm = torch.arange(d).reshape(2, d // 2).T.reshape(-1)
            k, v = super().update(key_states[..., perm].contiguous(), value_states, layer_idx, *a, **kw)
            return k[..., torch.argsort(perm)], v

    path = lm.resolve(args.model)
    model = lm.load_model(path)
    win = protocol.windows(path, args.windows * 512, 512)
    tests, names = [], []
    for fmt in args.kv.split(","):
        tests += [(model, lambda c, f=fmt: QuantizedKVCache(c, f)), (model, lambda c, f=fmt: GGUFOrder(c, f))]
        names += [(fmt, "transformers order (lowbit)"), (fmt, "GGUF order (llama.cpp)")]
    base, results = protocol.compare(win, (model, lambda c: QuantizedKVCache(c, "f16")), tests, progress=False)
    out = {"model": args.model, "windows": win.n_windows, "ppl_f16": base.ppl,
           "rows": [{"kv": f, "key_order": o, "ln_ppl_ratio": r.ln_ppl_ratio, "kld": r.kld, "same_top": r.same_top}
                    for (f, o), r in zip(names, results)]}
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
