"""Why keys are hard for TurboQuant on these models: relative error of each format on real K and V.

    python benchmarks/turboquant_kv_energy.py smollm2-135m     (or gemma3-270m)

Runs one 512-token pydoc window through the model with a lossless (f32) QuantizedKVCache, takes every
layer's K and V (post-RoPE, as cached), and prints per format the relative error ‖x̃ - x‖² / ‖x‖²
(summed over tokens and heads, averaged over layers), plus the share of the energy that is the
per-channel mean over tokens. All measured (seeded).
"""

from __future__ import annotations

import sys

FORMATS = ("q8_0", "q4_0", "kivi4", "kivi2", "turbo4", "turbo3", "turbo2", "turbo3.5", "turbo4:center",
           "turbo3:center")


def main(model_name: str) -> None:
    import torch

    from lowbit.eval import text
    from lowbit.eval.lm import load_model, load_tokenizer
    from lowbit.cache import QuantizedKVCache, cache_kwarg, make_store

    model, tok = load_model(model_name), load_tokenizer(model_name)
    w = text.windows(tok, 512, 512)
    cache = QuantizedKVCache(model.config, "f32")
    with torch.inference_mode():
        model(input_ids=w.ids[:1], use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})

    def rel(spec, x, keys):
        s = make_store(spec, x.shape[-1], keys=keys, seed=3)
        s.append(x)
        y = s.dense()[..., : x.shape[-2], :]
        return float(((y - x) ** 2).sum() / (x**2).sum())

    for kind in ("K", "V"):
        xs = [(layer.k_store if kind == "K" else layer.v_store).dense() for layer in cache.layers]
        mean = sum(float((x.mean(-2, keepdim=True) ** 2).sum() * x.shape[-2]) for x in xs) / sum(
            float((x**2).sum()) for x in xs)
        cells = [f"{spec} {sum(rel(spec, x, kind == 'K') for x in xs) / len(xs):.4f}" for spec in FORMATS]
        print(f"{model_name} {kind}: channel-mean energy {mean:.2f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
