"""`lowbit eval weights --model gemma3-270m --weights Q1_0 [--method gptq]`: what a weight format costs.

The reference is the model *as shipped*: the GGUF's own (already 4/5/8-bit) weights, dequantized
(SmolLM2 ships as Q4_1, Gemma 3 270M as Q4_K_M). Each format is applied to those weights with
llama.cpp's mix rules (the planner's, as `lowbit quantize` writes them: e.g. the tied embedding stays
Q8_0), the model is rebuilt with the dequantized tensors, and compared on the pydoc text:
perplexity (context stated), KL divergence and top-1 agreement against the shipped model.

Bits per weight are *exact* from what is stored: every scale, offset and rotation seed counted.
`bits_per_weight` is the whole model (all tensors, embeddings and norms included); `body_bits_per_weight`
counts only the transformer blocks' matrices.

Formats: shipped, any quantizable llama.cpp mix (Q8_0, Q4_0, Q4_1, Q5_0, MXFP4_MOE, TQ2_0, TQ1_0, Q1_0)
and ARB1 (lowbit's rotated/ARB binarization, which takes the place Q1_0 would in the mix).
`--pad` lets Q1_0/ARB1 take rows that are not whole 128-blocks (SmolLM2's 576): bytes counted, and
such a Q1_0 tensor is not a file llama.cpp can load.
`--ladder` runs the standard table (docs/weights.md) and prints or writes all of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from lowbit.commands._common import add_format
from lowbit.report.render import print_json

LADDER = [  # (weights, method) rows of the results table
    ("shipped", None), ("Q8_0", None), ("Q4_0", None), ("TQ2_0", "ref"), ("TQ1_0", "ref"),
    ("TQ1_0", "absmean"), ("TQ1_0", "absmean-group"), ("Q1_0", "ref"), ("Q1_0", "gptq"),
    ("ARB1", "rht-arb"), ("ARB1", "rht-arb-gptq"),
]
COMBINED = [  # weights x KV cache: "today" against the seed's "1-bit + TurboQuant", and the two mixed cells
    ("shipped", None, "f16"), ("shipped", None, "turbo3"), ("Q1_0", "ref", "f16"), ("Q1_0", "ref", "turbo3"),
    ("ARB1", "rht-arb", "f16"), ("ARB1", "rht-arb", "turbo3"),
]
ONE_BIT = ("Q1_0", "ARB1")
REPORT_JSON = "src/lowbit/report/weights_quality.json"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma3-270m", help="smollm2-135m, gemma3-270m or a .gguf path")
    p.add_argument("--weights", default="Q1_0", help="shipped, Q8_0, Q4_0, TQ2_0, TQ1_0, Q1_0, ARB1, ...")
    p.add_argument("--method", default=None, help="Q1_0: ref|gptq|rht|rht-gptq; ARB1: arb|rht-arb|arb-gptq|rht-arb-gptq; "
                   "TQ*: ref|absmean|absmean-group")
    p.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    p.add_argument("--context", type=int, default=512, help="window length in tokens (default 512, as llama-perplexity)")
    p.add_argument("--pure", action="store_true", help="no mix overrides: every quantizable tensor gets the format")
    p.add_argument("--pad", action="store_true", help="let Q1_0/ARB1 zero-pad rows that are not whole blocks")
    p.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens for gptq methods")
    p.add_argument("--kv", default=None, help="also run through a KV cache in this format (f16, turbo3, q8_0, ...): "
                   "the prompt half prefilled, the rest teacher-forced 32 tokens at a time through the cache")
    p.add_argument("--ladder", action="store_true", help="run the whole results table for the model")
    p.add_argument("--combined", action="store_true",
                   help="weights x KV cache: shipped 4-bit + f16 KV ('today') against 1-bit + turbo3 KV, and the mixed cells")
    p.add_argument("--write", default=None, help=f"with --ladder: also merge the rows into this JSON (e.g. {REPORT_JSON})")
    add_format(p, ("table", "json"))


def _is_body(name: str) -> bool:
    return name.startswith("blk.") and not name.endswith("norm.weight") and len(name.split(".")) > 2


def tensor_types(path, fmt: str, pure: bool, pad: bool) -> dict[str, str]:
    """Per-tensor types: the planner's mix rules; ARB1 (and padded Q1_0) take Q1_0's place."""
    from lowbit.commands.quantize import plan_types
    from lowbit.errors import LowbitError

    if fmt not in ONE_BIT:
        return plan_types(path, fmt, pure)
    try:
        types = plan_types(path, "Q1_0", pure)
    except LowbitError:
        if not (pad or fmt == "ARB1"):
            raise
        # llama.cpp refuses Q1_0 here; Q4_0's mix makes the same choices for the rest (tied embedding
        # -> Q8_0) and puts its own type exactly where Q1_0 would go.
        types = {n: ("Q1_0" if t == "Q4_0" else t) for n, t in plan_types(path, "Q4_0", pure).items()}
    return {n: (fmt if t == "Q1_0" else t) for n, t in types.items()}


def quantized_weights(model, fmt: str, method: str | None, pure: bool = False, pad: bool = False,
                      calib_tokens: int = 4096, progress: bool = True):
    """(replace dict for lm.load_model, bits dict) for one format."""
    from lowbit.eval import lm
    from lowbit.formats.weights import weight_type
    from lowbit.quant import weights as W

    path = lm.resolve(model)
    shipped = lm.gguf_tensor_types(path)
    src = lm.gguf_weights(path)
    n = {k: int(v.size) for k, v in src.items()}
    if fmt == "shipped":
        from lowbit.models.gguf_header import read_header

        nbytes = {t.name: t.nbytes for t in read_header(path).tensors}
        return {}, _bits(nbytes, n), "as shipped"
    types = tensor_types(path, fmt, pure, pad)
    own = fmt if fmt in ONE_BIT else _mix_default(fmt)
    if method is not None:
        W.check(own, method)
    hessians = {}
    if method and W.needs_hessian(method):
        from lowbit.quant.binarize import calibration_hessians

        targets = [k for k, t in types.items() if t == own]
        hessians = calibration_hessians(path, targets, n_tokens=calib_tokens, progress=progress)
    replace, nbytes = {}, {}
    for name, t in types.items():
        if t == shipped[name]:  # already stored that way: kept byte for byte
            nbytes[name] = weight_type(t).tensor_bytes(tuple(reversed(src[name].shape)))
            continue
        q = W.quantize(src[name], t, method if t == own else None, hessian=hessians.get(name),
                       pad=pad and t in ONE_BIT, name=name)
        replace[name] = q.values
        nbytes[name] = q.nbytes
    return replace, _bits(nbytes, n), own


def _mix_default(fmt: str) -> str:
    from lowbit.formats.weights import mix

    return mix(fmt).default.name


def _bits(nbytes: dict[str, int], n: dict[str, int]) -> dict:
    body = [k for k in nbytes if _is_body(k)]
    return {
        "bits_per_weight": sum(nbytes.values()) * 8 / sum(n.values()),
        "body_bits_per_weight": sum(nbytes[k] for k in body) * 8 / sum(n[k] for k in body),
        "tensor_bytes": sum(nbytes.values()),
    }


def _cache_factory(kv: str | None):
    if kv is None:
        return None
    if kv.lower() == "f16":
        from lowbit.eval.metrics import dynamic_cache

        return dynamic_cache
    from lowbit.cache import QuantizedKVCache

    def make(config, _kv=kv.lower()):
        return QuantizedKVCache(config, _kv)

    make.__qualname__ = f"QuantizedKVCache[{kv.lower()}]"
    return make


def evaluate_weights(model, fmt: str, method: str | None = None, tokens: int = 4096, context: int = 512,
                     pure: bool = False, pad: bool = False, calib_tokens: int = 4096, progress: bool = True,
                     kv: str | None = None) -> dict:
    from lowbit.errors import LowbitError
    from lowbit.eval import lm, metrics, text

    from lowbit.quant import weights as W

    t0 = time.perf_counter()
    fmt = "shipped" if fmt.lower() == "shipped" else fmt.upper()
    if tokens < context:
        raise LowbitError(f"--tokens ({tokens}) must be at least --context ({context})")
    if fmt != "shipped":  # refuse bad names before minutes of model loading
        W.check(fmt if fmt in ONE_BIT else _mix_default(fmt), method)
    if kv is not None:
        from lowbit.formats.kv import kv_format

        kv_format(kv)
    path = lm.resolve(model)
    tok = lm.load_tokenizer(path)
    win = text.windows(tok, n_tokens=tokens, context=context)
    base = lm.load_model(path)
    ref = metrics.reference(base, win, progress=progress)
    replace, bits, own = quantized_weights(path, fmt, method, pure, pad, calib_tokens, progress)
    net = lm.load_model(path, replace=replace) if replace else base
    q = metrics.evaluate(net, win, reference=ref, progress=progress, make_cache=_cache_factory(kv),
                         description=f"{fmt} {method or ''} {kv or ''}".strip())
    from lowbit.eval.artifacts import MODELS

    name = next((m for m in MODELS if lm.resolve(m) == path), str(path)) if str(model) in MODELS else str(model)
    return {
        "model": name, "weights": fmt, "method": method or ("ref" if fmt != "shipped" else None),
        "bits_per_weight": round(bits["bits_per_weight"], 4),
        "body_bits_per_weight": round(bits["body_bits_per_weight"], 4),
        "tensor_bytes": bits["tensor_bytes"], "tokens": q.tokens, "context": q.context,
        "ppl": q.ppl, "ppl_reference": q.ppl_reference, "kld": q.kld, "top1": q.top1,
        "pure": pure, "padded": pad, "kv": kv, "seconds": round(time.perf_counter() - t0, 1),
    }


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{rows[0]['model']}: weights vs the model as shipped "
                    f"({rows[0]['tokens']} scored tokens, context {rows[0]['context']}, pydoc text)")
    for c in ("weights", "method", "KV", "bpw (model)", "bpw (body)", "PPL", "KLD", "top-1"):
        t.add_column(c, justify="left" if c in ("weights", "method") else "right")
    for r in rows:
        t.add_row(r["weights"], str(r["method"] or ""), str(r.get("kv") or "none"), f"{r['bits_per_weight']:.3f}", f"{r['body_bits_per_weight']:.3f}",
                  f"{r['ppl']:.2f}", f"{r['kld']:.3f}", f"{r['top1']:.3f}")
    Console().print(t)


def run(args: argparse.Namespace) -> int:
    from lowbit.errors import LowbitError

    if args.ladder or args.combined:
        rows = []
        plan = LADDER if args.ladder else COMBINED
        for fmt, method, *kv in [(*x, None) if len(x) == 2 else x for x in plan]:
            try:
                rows.append(evaluate_weights(args.model, fmt, method, args.tokens, args.context, args.pure,
                                             args.pad or fmt in ONE_BIT, args.calib_tokens, kv=kv[0] or args.kv))
                r = rows[-1]
                print(f"{r['model']} {fmt} {method or ''} kv={r['kv']}: bpw {r['bits_per_weight']:.3f} "
                      f"(body {r['body_bits_per_weight']:.3f}) ppl {r['ppl']:.2f} kld {r['kld']:.3f} "
                      f"top1 {r['top1']:.3f} [{r['seconds']:.0f} s]", file=sys.stderr, flush=True)
            except LowbitError as e:
                print(f"lowbit: {fmt} {method}: {e}", file=sys.stderr)
        if args.write:
            _merge(args.write, rows)
        if args.format == "json":
            print_json(rows)
        else:
            _table(rows)
        return 0
    r = evaluate_weights(args.model, args.weights, args.method, args.tokens, args.context, args.pure, args.pad,
                         args.calib_tokens, kv=args.kv)
    if args.format == "json":
        print_json(r)
    else:
        _table([r])
    return 0


def _merge(path: str, rows: list[dict]) -> None:
    """Replace this model's rows in the report JSON, atomically."""
    import os
    import tempfile
    from pathlib import Path

    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {"rows": []}
    models = {r["model"] for r in rows}
    kinds = {r.get("kv") is not None for r in rows}  # ladder rows (no KV) and combined rows are kept apart
    data["rows"] = [r for r in data.get("rows", [])
                    if r["model"] not in models or (r.get("kv") is not None) not in kinds] + rows
    fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, p)
