"""What a KV-cache format does to a real model (SmolLM2-135M, Gemma 3 270M, on CPU): `lowbit eval kv`.

The model is loaded from its real GGUF file (lowbit.eval.lm). Measured, per format:
- ppl on pydoc_data topics text in windows of `context` tokens (first half prefilled, the rest fed
  `chunk` tokens at a time through the cache, so every scored token attends over stored bytes);
- kld and top1 against the same windows through an f16 QuantizedKVCache (the reference, `ppl_f16`);
- niah: the fraction of needle-in-a-haystack trials (lowbit.eval.niah) retrieved through the cache.
bits_per_value is exact (formats/kv.py), averaged over K and V and over layers (boundary layers f16).
"""

from __future__ import annotations

from lowbit.errors import LowbitError
from lowbit.eval import metrics, niah, text
from lowbit.eval import protocol as llama_protocol
from lowbit.eval.lm import gguf_info, load_model, load_tokenizer
from lowbit.limits import (EVAL_CHUNK, EVAL_CONTEXT, EVAL_TOKENS, KV_BOUNDARY, NIAH_DEPTH, NIAH_LENGTH, SEED,
                           fraction, items, whole)
from lowbit.cache import QuantizedKVCache
from lowbit.progress import honours_progress


def bits_per_value(plan, head_dim: int) -> tuple[float, float, float]:
    """Exact bits per cached value over all layers: (K, V, both)."""
    k = sum(float(ks.fmt.bits_per_value(head_dim)) for ks, _ in plan) / len(plan)
    v = sum(float(vs.fmt.bits_per_value(head_dim)) for _, vs in plan) / len(plan)
    return k, v, (k + v) / 2


@honours_progress
def evaluate_kv(model_name: str, kv_k: str, kv_v: str | None = None, *, boundary: int = 0, tokens: int = 2048,
                context: int = 512, chunk: int = 128, niah_lengths=(1024,), niah_depths=(0.1, 0.5, 0.9),
                seed: int = 0, progress: bool = True, protocol: str = "lowbit") -> dict:
    kv_v = kv_v or kv_k
    llama_protocol.check(protocol)
    # every number checked before the model loads (seconds) and before any allocation it sizes
    whole(boundary, "--boundary", KV_BOUNDARY)
    whole(tokens, "--tokens", EVAL_TOKENS)
    whole(context, "--context", EVAL_CONTEXT)
    whole(chunk, "--chunk", EVAL_CHUNK)
    whole(seed, "--seed", SEED)
    niah_lengths = items(niah_lengths, "--niah-lengths", lambda v, n: whole(v, n, NIAH_LENGTH))
    niah_depths = items(niah_depths, "--niah-depths", lambda v, n: fraction(v, n, NIAH_DEPTH))
    info = gguf_info(model_name)
    model, tok = load_model(model_name), load_tokenizer(model_name)
    probe = QuantizedKVCache(model.config, kv_k, kv_v, boundary=boundary, seed=seed)  # validates the settings
    bpv_k, bpv_v, bpv = bits_per_value(probe.plan, info.head_dim)

    def make_cache(config):
        return QuantizedKVCache(config, kv_k, kv_v, boundary=boundary, seed=seed)

    def f16_cache(config):
        return QuantizedKVCache(config, "f16")

    label = f"{probe.plan[len(probe.plan) // 2][0].name}/{probe.plan[len(probe.plan) // 2][1].name}"
    extra = {"protocol": protocol}
    if protocol == "llama.cpp":  # llama-perplexity's windows and sums; the f16 cache is its `-ctk f16` base run
        q, extra = llama_protocol.quality(info.path, tokens, context, (model, f16_cache), (model, make_cache),
                                          progress=progress, description=f"{info.path.name} {label} (llama.cpp)")
    else:
        windows = text.windows(tok, tokens, context)
        ref = metrics.reference(model, windows, make_cache=f16_cache, chunk=chunk, name=f"f16-cache/chunk{chunk}",
                                progress=progress)
        q = metrics.evaluate(model, windows, make_cache=make_cache, chunk=chunk, reference=ref, progress=progress,
                             description=f"{info.path.name} {label}")
    result = {
        "model": model_name,
        "kv_k": probe.plan[len(probe.plan) // 2][0].name,
        "kv_v": probe.plan[len(probe.plan) // 2][1].name,
        "boundary": boundary,
        "bits_per_value": bpv,
        "bits_per_value_k": bpv_k,
        "bits_per_value_v": bpv_v,
        "head_dim": info.head_dim,
        "kv_heads": info.n_kv_heads,
        "tokens": q.tokens,
        "context": q.context,
        "prefill": q.prefill,
        "chunk": q.chunk,
        "ppl": q.ppl,
        "ppl_f16": q.ppl_reference,
        "kld": q.kld,
        "top1": q.top1,
        "niah": None,
        "seconds": q.seconds,
        **extra,
    }
    if niah_lengths and niah_depths:
        too_long = [n for n in niah_lengths if n > model.config.max_position_embeddings]
        if too_long:
            raise LowbitError(f"NIAH length {too_long[0]} exceeds {model_name}'s context "
                              f"({model.config.max_position_embeddings})")
        r = niah.niah(model, tok, lengths=tuple(niah_lengths), depths=tuple(niah_depths), make_cache=make_cache,
                      seed=seed, progress=progress)
        result["niah"] = r.score
        result["niah_trials"] = [{"length": t.length, "depth": t.depth, "found": t.found, "answer": t.answer}
                                 for t in r.trials]
    return result
