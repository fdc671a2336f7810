"""`lowbit eval kv`: what a KV-cache format does to a real model (SmolLM2-135M, Gemma 3 270M, on CPU).

The measurement is lowbit.eval.kv.evaluate_kv (perplexity, KLD and top-1 against an f16 cache, NIAH);
this command reads the settings and prints its result.
"""

from __future__ import annotations

import argparse
import sys

from lowbit.errors import LowbitError
from lowbit.eval import PROTOCOLS
from lowbit.formats.kv import kv_format
from lowbit.models.local import MODELS
from lowbit.progress import step
from lowbit.report.render import Table, print_json


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
    parser.add_argument("--kv", default="turbo3", help="format for K and V (e.g. turbo3, q8_0, kivi2, q4_0:norot)")
    parser.add_argument("--kv-k", "-ctk", "--cache-type-k", dest="kv_k", default=None,
                        help="format for K (overrides --kv; llama.cpp -ctk)")
    parser.add_argument("--kv-v", "-ctv", "--cache-type-v", dest="kv_v", default=None,
                        help="format for V (overrides --kv; llama.cpp -ctv)")
    parser.add_argument("--boundary", type=int, default=0, help="keep the first and last N layers in f16")
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens (cut into --context windows)")
    parser.add_argument("--context", "-c", "--ctx-size", dest="context", type=int, default=512,
                        help="tokens per window (llama-perplexity's -c)")
    parser.add_argument("--chunk", type=int, default=128, help="tokens per forward after the prefill")
    parser.add_argument("--niah-lengths", type=_ints, default=(1024,), help="NIAH prompt lengths (comma list)")
    parser.add_argument("--niah-depths", type=_floats, default=(0.1, 0.5, 0.9), help="NIAH needle depths")
    parser.add_argument("--no-niah", action="store_true", help="skip needle-in-a-haystack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="lowbit",
                        help="lowbit: half prefilled, the rest decoded --chunk tokens at a time through the cache; "
                        "llama.cpp: llama-perplexity's (its text, tokens and windows, each window one pass through "
                        "the cache, its PPL/KLD sums and their ±)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args) -> int:
    if args.tokens < args.context:
        raise LowbitError(f"--tokens ({args.tokens}) must be at least --context ({args.context})")
    with step(True, "loading torch and transformers"):  # seconds: only when the command runs
        from lowbit.eval.kv import evaluate_kv

    kv_k = args.kv_k or args.kv
    kv_v = args.kv_v or args.kv
    res = evaluate_kv(args.model, kv_k, kv_v, boundary=args.boundary, tokens=args.tokens, context=args.context,
                      chunk=args.chunk, niah_lengths=() if args.no_niah else args.niah_lengths,
                      niah_depths=args.niah_depths, seed=args.seed, progress=sys.stderr.isatty(),
                      protocol=args.protocol)
    if args.format == "json":
        print_json(res)
        return 0
    kv_table(res).render("table")
    return 0


def kv_table(res: dict) -> Table:
    """The measured format beside its baseline, an f16 cache (KLD 0 and top-1 1 by definition)."""
    boundary = f", first/last {res['boundary']} layers f16" if res["boundary"] else ""
    t = Table(f"{res['model']}: KV cache K={res['kv_k']} V={res['kv_v']}{boundary}, measured on "
              f"{res['tokens']:,} scored tokens, context {res['context']}"
              + (", llama-perplexity's protocol" if res.get("protocol") == "llama.cpp" else ""),
              ["KV cache (K/V)", "bits/value", "PPL", "PPL / f16", "KLD", "top-1", "NIAH"])
    t.add("f16/f16 (baseline)", f"{float(kv_format('f16').bits_per_value(res['head_dim'])):.3f}", f"{res['ppl_f16']:.4f}", "1.000", "0", "1.0000", "-")
    t.add(f"{res['kv_k']}/{res['kv_v']}", f"{res['bits_per_value']:.3f}", f"{res['ppl']:.4f}",
          f"{res['ppl'] / res['ppl_f16']:.3f}", f"{res['kld']:.5f}", f"{res['top1']:.4f}",
          "-" if res["niah"] is None else f"{res['niah']:.2f}")
    t.caption = ("Bits per value are exact (formats/kv.py); PPL, KLD (nats) and top-1 are measured, KLD and top-1 "
                 "against the f16 cache. NIAH: needles retrieved through the cache (not run for the baseline).\n"
                 "Measured by: lowbit " + " ".join(sys.argv[1:]))
    return t
