"""lowbit plan MODEL: one model under one scenario, by tensor class and tensor by tensor."""

from __future__ import annotations

import argparse

from lowbit.commands._common import (add_batch_options, add_format, add_model_options, add_recipe_options, engine_arg,
                                    kv_pair, recipe_options)
from lowbit.models.config import params_label
from lowbit.planning.planner import plan
from lowbit.report.render import Table, fmt_bytes, print_json, unit


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="built-in name (e.g. qwen3.5-122b-a10b), a config.json (or its folder), a .gguf (split files found), "
                                       "or a remote GGUF: https://.../FILE.gguf or hf://OWNER/REPO/FILE.gguf (header only)")
    add_model_options(p)
    add_recipe_options(p)
    add_batch_options(p)
    p.add_argument("--tensors", action="store_true", help="list every tensor (table formats)")
    add_format(p)


def run(args: argparse.Namespace) -> int:
    units = unit(args.units)
    k, v = kv_pair(args, "f16")
    p = plan(args.model, args.weights, kv_k=k, kv_v=v, context=args.context, sequences=args.sequences,
             pure=args.pure, mtp=args.mtp, vision=args.vision, engine=engine_arg(args), **recipe_options(args))
    if args.format == "json":
        print_json(p.to_json())
        return 0
    cfg = p.config
    kinds = Table(
        f"{p.model}: {p.scenario.mix.name}{' --pure' if p.scenario.pure else ''} weights, KV {k}/{v}, "
        f"{p.context:,} tokens x {p.sequences} seq; params {p.params_total:,} total, {p.params_active:,} active/token",
        ["tensor class", "tensors", "params", "types", f"bytes ({units})", "bits/weight"],
    )
    for kind, row in p.by_kind().items():
        kinds.add(kind, row["tensors"], f"{row['params']:,}", ", ".join(row["types"]), fmt_bytes(row["bytes"], units, 3),
                  f"{row['bytes'] * 8 / row['params']:.3f}")
    kinds.add("weights (all)", len(p.tensors), f"{p.params_total:,}", "", fmt_bytes(p.weights_bytes, units, 3),
              f"{p.weights_bytes * 8 / p.params_total:.4f}")
    kinds.caption = _recipe_line(p)
    kinds.render(args.format)
    memory = Table(
        f"Memory ({cfg.count('full_attention')} full-attention, {cfg.count('sliding_attention')} sliding-window, "
        f"{cfg.count('linear_attention')} recurrent (Gated DeltaNet or Mamba) layers; {params_label(p.params_total)} params)",
        ["part", f"{units}", "bytes", "provenance"], right_align_from=1,
    )
    prov = p.provenance()
    for label, n, key in [("weights", p.weights_bytes, "weights_bytes"), ("KV cache", p.kv_bytes, "kv_bytes"),
                          ("recurrent state", p.state_bytes, "state_bytes"), ("runtime buffers", p.runtime_bytes, "runtime_bytes")]:
        memory.add(label, fmt_bytes(n, units, 3), f"{n:,}", prov[key])
    memory.add("total", fmt_bytes(p.total_bytes, units, 3), f"{p.total_bytes:,}", "")
    memory.add("GGUF header (not in total)", fmt_bytes(p.header_bytes, units, 3), f"{p.header_bytes:,}",
               prov["gguf_header_bytes"])
    memory.add("GGUF file (not in total)", fmt_bytes(p.file_bytes, units, 3), f"{p.file_bytes:,}", prov["file_bytes"])
    memory.width = 160
    memory.render(args.format)
    if args.tensors:
        t = Table("Tensors (ggml order: ne0 first)", ["name", "shape", "class", "type", "bytes"], right_align_from=4)
        for x in p.tensors:
            t.add(x.name, "x".join(map(str, x.shape)), x.kind, x.type, f"{x.bytes:,}")
        t.render(args.format)
    return 0


def _recipe_line(p) -> str:
    r = p.recipe
    given = "given" if r.imatrix else "not given"
    why = " (assumed: the recipe cannot be made without one)" if r.imatrix and p.imatrix_assumed else \
        " (assumed: not needed)" if p.imatrix_assumed else ""
    opts = " ".join(a for a in r.args() if a not in ("--imatrix", "FILE"))
    line = f"llama-quantize {opts + ' ' if opts else ''}{p.scenario.mix.name}; importance matrix {given}{why}"
    files = p.origin.get("files", [])
    if "fetched_bytes" in p.origin:
        line += (f"\nheader{'s' if len(files) > 1 else ''} read over HTTP from {len(files)} file(s) of "
                 f"{sum(f['bytes'] for f in files):,} bytes: fetched {p.origin['fetched_bytes']:,} bytes")
    elif len(files) > 1:
        line += f"\nsplit model: {len(files)} files"
    return line
