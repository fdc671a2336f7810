"""`lowbit quantize MODEL --to Q1_0 [--method gptq] [--pure] -o out.gguf`: a real GGUF, llama.cpp's mix.

The work is lowbit.quant.quantize_file (types from the simulator's mix rules, so the written bytes are
what `lowbit plan` predicts); this command resolves the model, wires calibration for gptq and prints
the per-type summary.
"""

from __future__ import annotations

import argparse
import sys

from lowbit.commands._common import add_format
from lowbit.models.catalog import gguf_path
from lowbit.progress import step
from lowbit.limits import CALIB_TOKENS, whole
from lowbit.quant.quantize_file import quantize_file
from lowbit.printable import markup_safe
from lowbit.report.render import print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .gguf path, or smollm2-135m / gemma3-270m")
    p.add_argument("--to", required=True, help="llama.cpp mix: Q1_0, TQ1_0, TQ2_0, Q4_0, Q8_0, ...")
    p.add_argument("--method", default=None,
                   help="for the mix's own type: Q1_0 ref|gptq; TQ1_0/TQ2_0 ref|absmean|absmean-group (default ref)")
    p.add_argument("--pure", action="store_true", help="every quantizable tensor gets the mix's type (llama-quantize --pure)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path (written atomically)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens for --method gptq (default 4096)")
    add_format(p, ("table", "json"))


def run(args: argparse.Namespace) -> int:
    whole(args.calib_tokens, "--calib-tokens", CALIB_TOKENS)
    path = gguf_path(args.model)

    def calibrate(names):
        with step(True, "loading torch and transformers"):  # only for gptq
            from lowbit.eval.calibration import calibration_hessians

        return calibration_hessians(path, names, n_tokens=args.calib_tokens)

    summary = quantize_file(path, args.to, args.output, args.method, args.pure, args.force, calibrate=calibrate)
    if args.format == "json":
        print_json(summary)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=markup_safe(f"{summary['output']}  ({summary['mix']}, method {summary['method']}"
                                    f"{', pure' if args.pure else ''})"))
    for col in ("type", "tensors", "params", "bytes", "bits/weight"):
        table.add_column(col, justify="right" if col != "type" else "left")
    for name, r in sorted(summary["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        table.add_row(name, str(r["tensors"]), f"{r['params']:,}", f"{r['bytes']:,}", f"{r['bytes'] * 8 / r['params']:.4f}")
    table.add_row("all", "", f"{summary['params']:,}", f"{summary['tensor_bytes']:,}", f"{summary['bits_per_weight']:.4f}")
    Console().print(table)
    print(f"file {summary['file_bytes']:,} bytes (exact, measured); written in {summary['seconds']:.1f} s", file=sys.stderr)
    return 0
