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
from lowbit.eval import PROTOCOLS
from lowbit.progress import step
from lowbit.eval.bootstrap import MIN_WINDOWS
from lowbit.eval.text import DEFAULT_TOKENS
from lowbit.report.quality import ci_text
from lowbit.report.render import Table, print_json
from lowbit.printable import printable
from lowbit.safe_write import check_target

REPORT_JSON = "src/lowbit/report/weights_quality.json"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma3-270m",
                   help="smollm2-135m, gemma3-270m, a .gguf path, or NAME=PATH (that file, its rows named NAME)")
    p.add_argument("--weights", default="Q1_0", help="stored (the file as it is), Q8_0, Q4_0, TQ2_0, TQ1_0, Q1_0, ARB1, ...")
    p.add_argument("--method", default=None, help="Q1_0: ref|gptq|rht|rht-gptq; ARB1: arb|rht-arb|arb-gptq|rht-arb-gptq; "
                   "TQ*: ref|absmean|absmean-group")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"text tokens to evaluate (default {DEFAULT_TOKENS:,}, or the whole text where it is shorter)")
    p.add_argument("--context", "-c", "--ctx-size", dest="context", type=int, default=512,
                   help="window length in tokens (default 512; llama-perplexity's -c)")
    p.add_argument("--pure", action="store_true", help="no mix overrides: every quantizable tensor gets the format")
    p.add_argument("--pad", action="store_true", help="let Q1_0/ARB1 zero-pad rows that are not whole blocks")
    p.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens for gptq methods")
    p.add_argument("--kv", default=None, help="also run through a KV cache in this format (f16, turbo3, q8_0, ...): "
                   "the prompt half prefilled, the rest teacher-forced 32 tokens at a time through the cache")
    p.add_argument("--protocol", choices=PROTOCOLS, default="lowbit",
                   help="lowbit: one pass per window, no cache; llama.cpp: llama-perplexity's (its text, tokens and "
                   "windows, an f16 cache as its default -ctk f16, its PPL/KLD sums and their ±)")
    p.add_argument("--ladder", action="store_true", help="run the whole results table for the model")
    p.add_argument("--combined", action="store_true",
                   help="weights x KV cache: stored 4-bit + f16 KV ('today') against 1-bit + turbo3 KV, and the mixed cells")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the float32 model runs")
    p.add_argument("--write", default=None, help=f"with --ladder: also merge the rows into this JSON (e.g. {REPORT_JSON})")
    add_format(p, ("table", "json"))


def _ratio(x: float) -> str:
    return f"{x:.3f}" if x < 100 else f"{x:,.0f}"


def weights_table(rows: list[dict]) -> Table:
    """Each measured row beside its baseline, the model as stored (its own PPL, KLD 0, top-1 1), with 95% intervals."""
    r0 = rows[0]
    text = r0.get("text", {}).get("name", "pydoc text")
    t = Table(f"{r0['model']}: weight formats against the model as stored, measured on {r0['tokens']:,} scored "
              f"tokens of {r0.get('text_tokens', r0['tokens']):,} text tokens ({text}), context {r0['context']}, "
              f"{r0.get('device', 'cpu')}",
              ["weights", "method", "KV", "bpw\n(model)", "bpw\n(body)", "PPL", "PPL / stored\n[95% CI]",
               "KLD\n[95% CI]", "top-1\n[95% CI]"],
              right_align_from=3)
    if not any(r["weights"] == "stored" for r in rows):  # the ladder and the combined table measure it as a row
        t.add("stored", "(baseline)", "none", f"{r0['reference_bits_per_weight']:.3f}",
              f"{r0['reference_body_bits_per_weight']:.3f}", f"{r0['ppl_reference']:.2f}", "1.000", "0", "1.000")
    for r in rows:
        ratio = r["ppl"] / r["ppl_reference"]
        t.add(r["weights"], str(r["method"] or ""), str(r.get("kv") or "none"), f"{r['bits_per_weight']:.3f}",
              f"{r['body_bits_per_weight']:.3f}", f"{r['ppl']:,.2f}",
              ci_text(ratio, r.get("ppl_ratio_ci"), 3, same=1.0) if ratio < 100 else _ratio(ratio),
              ci_text(r["kld"], r.get("kld_ci"), 3), ci_text(r["top1"], r.get("top1_ci"), 3))
    if r0.get("protocol") == "llama.cpp":
        how = "under llama-perplexity's protocol (its windows and sums, an f16 KV cache as its default). "
    elif any(r.get("kv") for r in rows):
        how = ("each through its KV cache (the first half of a window prefilled, the rest decoded through the cache), "
               "the stored model with an f16 cache as the baseline. ")
    else:
        how = "with no KV cache. "
    t.caption = ("Bits per weight are exact (every scale and offset counted; body = the transformer blocks' "
                 "matrices); PPL, KLD (nats) and top-1 are measured, KLD and top-1 against the model as stored, "
                 + how
                 + ("[a, b]: 95% interval, bootstrap over windows paired with the stored model; '~' marks a PPL ratio "
                    "whose interval holds 1." if any(r.get("ppl_ratio_ci") for r in rows)
                    else f"No intervals: fewer than {MIN_WINDOWS} windows."))
    return t


def run(args: argparse.Namespace) -> int:
    # imported here: torch and transformers (seconds), and the CLI builds every command's parser
    with step(True, "loading torch and transformers"):
        from lowbit.eval.weights import COMBINED, LADDER, check_settings, evaluate_weights as _evaluate, merge_rows

    # NAME=PATH: a copy of a known model elsewhere (a GPU machine without the model packages) keeps its name
    name, sep, path = args.model.partition("=")
    if sep and not (name.strip() and path.strip()):
        raise LowbitError(f"--model {printable(args.model)[:60]}: NAME=PATH needs both")
    args.model = path if sep else args.model

    def evaluate_weights(*a, **kw):
        r = _evaluate(*a, **kw)
        return {**r, "model": name} if sep else r

    if args.ladder or args.combined:
        check_settings(args.model, args.tokens, args.context, args.calib_tokens, args.kv, args.device)  # once
        if args.write:
            check_target(args.write, force=True)  # before hours of evaluation, not after
        rows = []
        for row in LADDER if args.ladder else COMBINED:
            try:
                rows.append(evaluate_weights(args.model, row.weights, row.method, args.tokens, args.context, args.pure,
                                             args.pad or row.pad, args.calib_tokens, kv=row.kv or args.kv,
                                             device=args.device, protocol=args.protocol))
                r = rows[-1]
                print(f"{printable(r['model'])} {row.weights} {row.method or ''} kv={r['kv']}: bpw {r['bits_per_weight']:.3f} "
                      f"(body {r['body_bits_per_weight']:.3f}) ppl {r['ppl']:.2f} (stored {r['ppl_reference']:.2f}) "
                      f"kld {r['kld']:.3f} "
                      f"top1 {r['top1']:.3f} [{r['seconds']:.0f} s]", file=sys.stderr, flush=True)
            except LowbitError as e:
                print(f"lowbit: {row.weights} {row.method}: {printable(e)}", file=sys.stderr)
        if not rows:
            raise LowbitError("no row could be measured (each one's reason is above)")
        if args.write:
            merge_rows(args.write, rows)
        if args.format == "json":
            print_json(rows)
        else:
            weights_table(rows).render("table")
        return 0
    if args.weights.lower() == "shipped":
        print("lowbit: --weights shipped is now called stored", file=sys.stderr)
    r = evaluate_weights(args.model, args.weights, args.method, args.tokens, args.context, args.pure, args.pad,
                         args.calib_tokens, kv=args.kv, device=args.device, protocol=args.protocol)
    if args.format == "json":
        print_json(r)
    else:
        weights_table([r]).render("table")
    return 0
