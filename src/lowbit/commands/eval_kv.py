"""`lowbit eval kv`: what a KV-cache format does to a real model (SmolLM2-135M, Gemma 3 270M; CPU or GPU).

The measurement is lowbit.eval.kv.evaluate_kv (perplexity, KLD and top-1 against an f16 cache with 95%
intervals, NIAH); this command reads the settings and prints its result.
"""

from __future__ import annotations

import argparse
import sys

from lowbit.errors import LowbitError
from lowbit.eval import PROTOCOLS
from lowbit.formats.kv import kv_format
from lowbit.models.local import MODELS
from lowbit.progress import step
from lowbit.eval.bootstrap import MIN_WINDOWS
from lowbit.eval.text import DEFAULT_TOKENS
from lowbit.report.quality import ci_text, niah_text
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
    parser.add_argument("--tokens", type=int, default=None,
                        help=f"text tokens to evaluate, cut into --context windows (default {DEFAULT_TOKENS:,}, "
                             "or the whole text where it is shorter)")
    parser.add_argument("--context", "-c", "--ctx-size", dest="context", type=int, default=512,
                        help="tokens per window (llama-perplexity's -c)")
    parser.add_argument("--chunk", type=int, default=128, help="tokens per forward after the prefill")
    parser.add_argument("--niah-lengths", type=_ints, default=(1024,), help="NIAH prompt lengths (comma list)")
    parser.add_argument("--niah-depths", type=_floats, default=(0.1, 0.5, 0.9), help="NIAH needle depths")
    parser.add_argument("--niah-repeats", type=int, default=1,
                        help="needles per length and depth (other passphrases and haystacks)")
    parser.add_argument("--no-niah", action="store_true", help="skip needle-in-a-haystack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the float32 model runs")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="lowbit",
                        help="lowbit: half prefilled, the rest decoded --chunk tokens at a time through the cache; "
                        "llama.cpp: llama-perplexity's (its text, tokens and windows, each window one pass through "
                        "the cache, its PPL/KLD sums and their ±)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args) -> int:
    if args.tokens is not None and args.tokens < args.context:
        raise LowbitError(f"--tokens ({args.tokens}) must be at least --context ({args.context})")
    with step(True, "loading torch and transformers"):  # seconds: only when the command runs
        from lowbit.eval.kv import evaluate_kv

    kv_k = args.kv_k or args.kv
    kv_v = args.kv_v or args.kv
    res = evaluate_kv(args.model, kv_k, kv_v, boundary=args.boundary, tokens=args.tokens, context=args.context,
                      chunk=args.chunk, niah_lengths=() if args.no_niah else args.niah_lengths,
                      niah_depths=args.niah_depths, niah_repeats=args.niah_repeats, seed=args.seed,
                      device=args.device, progress=sys.stderr.isatty(), protocol=args.protocol)
    if args.format == "json":
        print_json(res)
        return 0
    kv_table(res).render("table")
    return 0


def kv_table(res: dict) -> Table:
    """The measured format beside its baseline, an f16 cache (KLD 0 and top-1 1 by definition), with 95% intervals."""
    boundary = f", first/last {res['boundary']} layers f16" if res["boundary"] else ""
    text = res.get("text", {}).get("name", "the evaluation text")
    t = Table(f"{res['model']}: KV cache K={res['kv_k']} V={res['kv_v']}{boundary}, measured on "
              f"{res['tokens']:,} scored tokens of {res.get('text_tokens', res['tokens']):,} text tokens "
              f"({text}), context {res['context']}, {res.get('device', 'cpu')}"
              + (", llama-perplexity's protocol" if res.get("protocol") == "llama.cpp" else ""),
              ["KV cache (K/V)", "bits/value", "PPL", "PPL / f16\n[95% CI]", "KLD\n[95% CI]", "top-1\n[95% CI]",
               "NIAH"])
    t.add("f16/f16 (baseline)", f"{float(kv_format('f16').bits_per_value(res['head_dim'])):.3f}",
          f"{res['ppl_f16']:.4f}", "1.000", "0", "1.0000", "-")
    t.add(f"{res['kv_k']}/{res['kv_v']}", f"{res['bits_per_value']:.3f}", f"{res['ppl']:.4f}",
          ci_text(res["ppl_ratio"], res.get("ppl_ratio_ci"), 3, same=1.0),
          ci_text(res["kld"], res.get("kld_ci"), 5), ci_text(res["top1"], res.get("top1_ci"), 4),
          "-" if res["niah"] is None else niah_text(res))
    n = res.get("windows_count", 0)
    intervals = (f"[a, b]: 95% interval, bootstrap over the {n} windows, paired with the f16 run on the same "
                 "windows; '~' marks a PPL ratio whose interval holds 1 (not told apart from f16)."
                 if res.get("ppl_ratio_ci") else f"No intervals: {n} window(s), fewer than {MIN_WINDOWS}.")
    t.caption = ("Bits per value are exact (formats/kv.py); PPL, KLD (nats) and top-1 are measured, KLD and top-1 "
                 f"against the f16 cache. {intervals} NIAH: needles retrieved through the cache, with a 95% Wilson "
                 "interval (not run for the baseline).\n"
                 "Measured by: lowbit " + " ".join(sys.argv[1:]))
    return t
