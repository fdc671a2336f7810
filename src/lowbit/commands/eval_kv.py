"""`lowbit eval kv`: what a KV-cache format does to a real model (SmolLM2-135M, Gemma 3 270M, on CPU).

The model is loaded from its real GGUF file (lowbit.eval.lm). Measured, per format:
- ppl on pydoc_data topics text in windows of --context tokens (first half prefilled, the rest fed
  --chunk tokens at a time through the cache, so every scored token attends over stored bytes);
- kld and top1 against the same windows through an f16 QuantizedKVCache (the reference, `ppl_f16`);
- niah: the fraction of needle-in-a-haystack trials (lowbit.eval.niah) retrieved through the cache.
bits_per_value is exact (formats/kv.py), averaged over K and V and over layers (boundary layers f16).
"""

from __future__ import annotations

import argparse
import sys

from lowbit.errors import LowbitError
from lowbit.report.render import print_json

MODELS = ("smollm2-135m", "gemma3-270m")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help=f"{' or '.join(MODELS)} (or a .gguf path)")
    parser.add_argument("--kv", default="turbo3", help="format for K and V (e.g. turbo3, q8_0, kivi2, q4_0:rot)")
    parser.add_argument("--kv-k", default=None, help="format for K (overrides --kv)")
    parser.add_argument("--kv-v", default=None, help="format for V (overrides --kv)")
    parser.add_argument("--boundary", type=int, default=0, help="keep the first and last N layers in f16")
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens (cut into --context windows)")
    parser.add_argument("--context", type=int, default=512, help="tokens per window")
    parser.add_argument("--chunk", type=int, default=128, help="tokens per forward after the prefill")
    parser.add_argument("--niah-lengths", type=_ints, default=(1024,), help="NIAH prompt lengths (comma list)")
    parser.add_argument("--niah-depths", type=_floats, default=(0.1, 0.5, 0.9), help="NIAH needle depths")
    parser.add_argument("--no-niah", action="store_true", help="skip needle-in-a-haystack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("table", "json"), default="table")


def bits_per_value(plan, head_dim: int) -> tuple[float, float, float]:
    """Exact bits per cached value over all layers: (K, V, both)."""
    k = sum(float(ks.fmt.bits_per_value(head_dim)) for ks, _ in plan) / len(plan)
    v = sum(float(vs.fmt.bits_per_value(head_dim)) for _, vs in plan) / len(plan)
    return k, v, (k + v) / 2


def evaluate_kv(model_name: str, kv_k: str, kv_v: str | None = None, *, boundary: int = 0, tokens: int = 2048,
                context: int = 512, chunk: int = 128, niah_lengths=(1024,), niah_depths=(0.1, 0.5, 0.9),
                seed: int = 0, progress: bool = True) -> dict:
    from lowbit.eval import metrics, niah, text
    from lowbit.eval.lm import gguf_info, load_model, load_tokenizer
    from lowbit.cache import QuantizedKVCache

    kv_v = kv_v or kv_k
    info = gguf_info(model_name)
    model, tok = load_model(model_name), load_tokenizer(model_name)
    probe = QuantizedKVCache(model.config, kv_k, kv_v, boundary=boundary, seed=seed)  # validates the settings
    bpv_k, bpv_v, bpv = bits_per_value(probe.plan, info.head_dim)

    def make_cache(config):
        return QuantizedKVCache(config, kv_k, kv_v, boundary=boundary, seed=seed)

    def f16_cache(config):
        return QuantizedKVCache(config, "f16")

    windows = text.windows(tok, tokens, context)
    ref = metrics.reference(model, windows, make_cache=f16_cache, chunk=chunk, name=f"f16-cache/chunk{chunk}",
                            progress=progress)
    label = f"{probe.plan[len(probe.plan) // 2][0].name}/{probe.plan[len(probe.plan) // 2][1].name}"
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
        "chunk": chunk,
        "ppl": q.ppl,
        "ppl_f16": ref.ppl,
        "kld": q.kld,
        "top1": q.top1,
        "niah": None,
        "seconds": q.seconds,
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


def run(args) -> int:
    if args.tokens < args.context:
        raise LowbitError(f"--tokens ({args.tokens}) must be at least --context ({args.context})")
    kv_k = args.kv_k or args.kv
    kv_v = args.kv_v or args.kv
    res = evaluate_kv(args.model, kv_k, kv_v, boundary=args.boundary, tokens=args.tokens, context=args.context,
                      chunk=args.chunk, niah_lengths=() if args.no_niah else args.niah_lengths,
                      niah_depths=args.niah_depths, seed=args.seed, progress=sys.stderr.isatty())
    if args.format == "json":
        print_json(res)
        return 0
    from rich.console import Console
    from rich.table import Table

    boundary = f", first/last {res['boundary']} layers f16" if res["boundary"] else ""
    t = Table(title=f"{res['model']}: KV cache K={res['kv_k']} V={res['kv_v']}{boundary} (measured)",
              caption="measured by: lowbit " + " ".join(sys.argv[1:]), caption_justify="left")
    for col in ("bits/value (exact)", "tokens", "context", "ppl", "ppl f16", "KLD", "top-1", "NIAH"):
        t.add_column(col, justify="right")
    t.add_row(f"{res['bits_per_value']:.3f}", str(res["tokens"]), str(res["context"]), f"{res['ppl']:.4f}",
              f"{res['ppl_f16']:.4f}", f"{res['kld']:.5f}", f"{res['top1']:.4f}",
              "-" if res["niah"] is None else f"{res['niah']:.2f}")
    Console().print(t)
    return 0
