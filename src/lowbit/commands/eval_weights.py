"""`lowbit eval weights --model gemma3-270m --weights Q1_0 [--method gptq]`: what a weight format costs.

The measurement is lowbit.eval.weights.evaluate_weights: the format applied with llama.cpp's mix rules
to the model as stored, then perplexity, KL divergence and top-1 against the stored model, with
exact bits per weight. `--ladder` runs the standard table (docs/weights.md) and prints or writes all
of it; `--combined` crosses weights with KV-cache formats.
"""

from __future__ import annotations

import argparse
import sys

from lowbit.commands._common import add_format
from lowbit.errors import LowbitError
from lowbit.report.render import print_json

REPORT_JSON = "src/lowbit/report/weights_quality.json"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma3-270m", help="smollm2-135m, gemma3-270m or a .gguf path")
    p.add_argument("--weights", default="Q1_0", help="stored (the file as it is), Q8_0, Q4_0, TQ2_0, TQ1_0, Q1_0, ARB1, ...")
    p.add_argument("--method", default=None, help="Q1_0: ref|gptq|rht|rht-gptq; ARB1: arb|rht-arb|arb-gptq|rht-arb-gptq; "
                   "TQ*: ref|absmean|absmean-group")
    p.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    p.add_argument("--context", "-c", "--ctx-size", dest="context", type=int, default=512,
                   help="window length in tokens (default 512; llama-perplexity's -c)")
    p.add_argument("--pure", action="store_true", help="no mix overrides: every quantizable tensor gets the format")
    p.add_argument("--pad", action="store_true", help="let Q1_0/ARB1 zero-pad rows that are not whole blocks")
    p.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens for gptq methods")
    p.add_argument("--kv", default=None, help="also run through a KV cache in this format (f16, turbo3, q8_0, ...): "
                   "the prompt half prefilled, the rest teacher-forced 32 tokens at a time through the cache")
    p.add_argument("--ladder", action="store_true", help="run the whole results table for the model")
    p.add_argument("--combined", action="store_true",
                   help="weights x KV cache: stored 4-bit + f16 KV ('today') against 1-bit + turbo3 KV, and the mixed cells")
    p.add_argument("--write", default=None, help=f"with --ladder: also merge the rows into this JSON (e.g. {REPORT_JSON})")
    add_format(p, ("table", "json"))


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{rows[0]['model']}: weights vs the model as stored "
                    f"({rows[0]['tokens']} scored tokens, context {rows[0]['context']}, pydoc text)")
    for c in ("weights", "method", "KV", "bpw (model)", "bpw (body)", "PPL", "KLD", "top-1"):
        t.add_column(c, justify="left" if c in ("weights", "method") else "right")
    for r in rows:
        t.add_row(r["weights"], str(r["method"] or ""), str(r.get("kv") or "none"), f"{r['bits_per_weight']:.3f}", f"{r['body_bits_per_weight']:.3f}",
                  f"{r['ppl']:.2f}", f"{r['kld']:.3f}", f"{r['top1']:.3f}")
    Console().print(t)


def run(args: argparse.Namespace) -> int:
    # imported here: torch and transformers, and the CLI builds every command's parser
    from lowbit.eval.weights import COMBINED, LADDER, evaluate_weights, merge_rows

    if args.ladder or args.combined:
        rows = []
        for row in LADDER if args.ladder else COMBINED:
            try:
                rows.append(evaluate_weights(args.model, row.weights, row.method, args.tokens, args.context, args.pure,
                                             args.pad or row.pad, args.calib_tokens, kv=row.kv or args.kv))
                r = rows[-1]
                print(f"{r['model']} {row.weights} {row.method or ''} kv={r['kv']}: bpw {r['bits_per_weight']:.3f} "
                      f"(body {r['body_bits_per_weight']:.3f}) ppl {r['ppl']:.2f} kld {r['kld']:.3f} "
                      f"top1 {r['top1']:.3f} [{r['seconds']:.0f} s]", file=sys.stderr, flush=True)
            except LowbitError as e:
                print(f"lowbit: {row.weights} {row.method}: {e}", file=sys.stderr)
        if args.write:
            merge_rows(args.write, rows)
        if args.format == "json":
            print_json(rows)
        else:
            _table(rows)
        return 0
    if args.weights.lower() == "shipped":
        print("lowbit: --weights shipped is now called stored", file=sys.stderr)
    r = evaluate_weights(args.model, args.weights, args.method, args.tokens, args.context, args.pure, args.pad,
                         args.calib_tokens, kv=args.kv)
    if args.format == "json":
        print_json(r)
    else:
        _table([r])
    return 0
