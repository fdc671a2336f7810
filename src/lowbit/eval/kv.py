"""What a KV-cache format does to a real model (SmolLM2-135M, Gemma 3 270M; CPU or GPU): `lowbit eval kv`.

The model is loaded from its real GGUF file (lowbit.eval.lm), in float32 on `device`. Measured, per format:
- ppl on the evaluation text (lowbit.eval.text; 32,768 tokens by default) in windows of `context` tokens
  (first half prefilled, the rest fed `chunk` tokens at a time through the cache, so every scored token
  attends over stored bytes);
- kld and top1 against the same windows through an f16 QuantizedKVCache (the reference, `ppl_f16`);
- 95% intervals of ppl / ppl_f16, kld and top1: a bootstrap over windows, paired with the reference
  (lowbit.eval.bootstrap); the per-window sums are in the result (`windows`), so two formats measured on
  the same windows can be compared later, paired too;
- niah: the fraction of needle-in-a-haystack trials (lowbit.eval.niah) retrieved through the cache, with
  a Wilson interval.
bits_per_value is exact (formats/kv.py), averaged over K and V and over layers (boundary layers f16).
"""

from __future__ import annotations

from lowbit.errors import LowbitError
from lowbit.eval import metrics, niah, text
from lowbit.eval import protocol as llama_protocol
from lowbit.eval.bootstrap import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, binomial_interval, interval_fields
from lowbit.eval.lm import device_name, gguf_info, load_model, load_tokenizer, torch_device
from lowbit.limits import (EVAL_CHUNK, EVAL_CONTEXT, EVAL_TOKENS, KV_BOUNDARY, NIAH_DEPTH, NIAH_LENGTH,
                           NIAH_REPEATS, SEED, fraction, items, whole)
from lowbit.cache import QuantizedKVCache
from lowbit.progress import honours_progress


def bits_per_value(plan, head_dim: int) -> tuple[float, float, float]:
    """Exact bits per cached value over all layers: (K, V, both)."""
    k = sum(float(ks.fmt.bits_per_value(head_dim)) for ks, _ in plan) / len(plan)
    v = sum(float(vs.fmt.bits_per_value(head_dim)) for _, vs in plan) / len(plan)
    return k, v, (k + v) / 2


@honours_progress
def evaluate_kv(model_name: str, kv_k: str, kv_v: str | None = None, *, boundary: int = 0,
                tokens: int | None = None, context: int = 512, chunk: int = 128, niah_lengths=(1024,),
                niah_depths=(0.1, 0.5, 0.9), niah_repeats: int = 1, seed: int = 0, device: str = "cpu",
                bootstrap_samples: int = BOOTSTRAP_SAMPLES, bootstrap_seed: int = BOOTSTRAP_SEED,
                progress: bool = True, protocol: str = "lowbit") -> dict:
    """tokens: text tokens to evaluate (None: text.DEFAULT_TOKENS, or the whole text where it is shorter).
    protocol: "lowbit" (half prefilled, the rest decoded `chunk` tokens at a time) or "llama.cpp" (lowbit.eval.protocol)."""
    kv_v = kv_v or kv_k
    llama_protocol.check(protocol)
    # every number checked before the model loads (seconds) and before any allocation it sizes
    whole(boundary, "--boundary", KV_BOUNDARY)
    if tokens is not None:
        whole(tokens, "--tokens", EVAL_TOKENS)
    whole(context, "--context", EVAL_CONTEXT)
    whole(chunk, "--chunk", EVAL_CHUNK)
    whole(seed, "--seed", SEED)
    niah_lengths = items(niah_lengths, "--niah-lengths", lambda v, n: whole(v, n, NIAH_LENGTH))
    niah_depths = items(niah_depths, "--niah-depths", lambda v, n: fraction(v, n, NIAH_DEPTH))
    whole(niah_repeats, "--niah-repeats", NIAH_REPEATS)
    dev = torch_device(device)
    info = gguf_info(model_name)
    model, tok = load_model(model_name, device=str(dev)), load_tokenizer(model_name)
    if tokens is None:
        tokens = text.default_tokens(tok)
    if tokens < context:
        raise LowbitError(f"--tokens ({tokens}) must be at least --context ({context})")
    too_long = [n for n in niah_lengths if n > model.config.max_position_embeddings] if niah_depths else []
    if too_long:  # before minutes of perplexity, not after
        raise LowbitError(f"NIAH length {too_long[0]} exceeds {model_name}'s context "
                          f"({model.config.max_position_embeddings})")
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
        "text": text.source(),
        "text_tokens": q.windows * q.context,
        "windows_count": q.windows,
        "tokens": q.tokens,
        "context": q.context,
        "prefill": q.prefill,
        "chunk": q.chunk,
        "device": device_name(dev),
        "ppl": q.ppl,
        "ppl_f16": q.ppl_reference,
        "kld": q.kld,
        "top1": q.top1,
        **interval_fields(q.stats, q.reference_stats, samples=bootstrap_samples, seed=bootstrap_seed),
        "niah": None,
        "seconds": q.seconds,
        **extra,
    }
    if niah_lengths and niah_depths:
        r = niah.niah(model, tok, lengths=tuple(niah_lengths), depths=tuple(niah_depths), make_cache=make_cache,
                      seed=seed, repeats=niah_repeats, progress=progress)
        result["niah"] = r.score
        result["niah_ci"] = binomial_interval(sum(t.found for t in r.trials), len(r.trials)).as_list()
        result["niah_trials"] = [{"length": t.length, "depth": t.depth, "found": t.found, "answer": t.answer}
                                 for t in r.trials]
    return result

