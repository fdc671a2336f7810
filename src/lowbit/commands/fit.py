"""lowbit fit MODEL --device D: does it fit, largest context, most users, best weight format, offload."""

from __future__ import annotations

import argparse

from lowbit.commands._common import CONTEXT_POLICY, add_context, add_engine, add_kv, add_sequences, add_weights, \
    add_wide, context_arg, count, engine_from, kv_pair
from lowbit.devices import budget
from lowbit.errors import LowbitError
from lowbit.models.catalog import QWEN35_FAMILY
from lowbit.models.hub import resolve_hf
from lowbit.planning.engines import engine_model
from lowbit.planning.fit import FitResult, fit
from lowbit.report.render import Table, fmt_bytes, print_json
from lowbit.report.speed_table import ESTIMATE_NOTE, sources, tps


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="built-in name (e.g. qwen3.5-27b), a config.json or checkpoint folder, "
                                            "a .gguf, or https://.../FILE.gguf or hf://OWNER/REPO/FILE.gguf (header only)")
    p.add_argument("--family", help="every model of a family instead of one MODEL (qwen3.5)")
    p.add_argument("--hf", metavar="ORG/NAME", help="fetch config.json from the Hugging Face Hub (online, on request)")
    p.add_argument("--device", help="a device from `lowbit devices` (e.g. rtx-4090, m4-max-64gb, phone-8gb)")
    p.add_argument("--memory", help="a memory budget instead of a device: 24GB (10^9 bytes) or 24GiB (2^30 bytes)")
    p.add_argument("--gpus", type=int, default=1, help="identical GPUs to split over (llama.cpp: layers; vLLM: "
                                                       "tensor parallel)")
    add_engine(p)
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=count, default=None, metavar="N",
                   help="llama.cpp: keep only the last N layers on the GPU (more than the layers: the output too); "
                        "default: all, or the offload lowbit finds")
    add_weights(p, None, "default Q4_K_M; a .gguf or a local real model (`lowbit models`): stored")
    add_kv(p, "f16")
    add_context(p, "default 32768, or the model's maximum if smaller; 128k = 131072")
    add_sequences(p, "--users", "concurrent sequences")
    p.add_argument("--mtp", action="store_true", help="add the MTP layer and its KV cache")
    p.add_argument("--vision", action="store_true", help="add the vision tower (llama.cpp's mmproj, F16)")
    p.add_argument("--host", default=None, help="the CPU that runs offloaded layers in the speed estimate "
                                                "(default cpu-64gb; this-cpu: this machine, measured)")
    add_wide(p, "the llama.cpp offload arguments and the speed estimate as columns")
    p.add_argument("--format", default="table", choices=("table", "json", "markdown"), help="output (default table)")
    p.epilog = CONTEXT_POLICY


def _model_arg(args: argparse.Namespace):
    if args.hf:
        if args.model:
            raise LowbitError("give either MODEL or --hf ORG/NAME, not both")
        return resolve_hf(args.hf)
    return args.model


def _engine(args: argparse.Namespace):
    engine = engine_from(args)
    if args.n_gpu_layers is None:
        return engine
    try:
        return engine_model(engine, n_gpu_layers=args.n_gpu_layers)
    except TypeError:  # an engine without layer offload
        raise LowbitError(f"-ngl/--n-gpu-layers is llama.cpp's; the {engine_model(engine).name} model has no layer "
                          "offload") from None


def run(args: argparse.Namespace) -> int:
    b = budget(args.device, args.memory, args.gpus)
    kv_k, kv_v = kv_pair(args, "f16")
    engine = _engine(args)
    context = context_arg(args, args.users)
    if args.family:
        if args.model or args.hf:
            raise LowbitError("give either MODEL or --family, not both")
        if args.family.lower() not in ("qwen3.5", "qwen35"):
            raise LowbitError(f"unknown family {args.family!r}; known: qwen3.5")
        models = QWEN35_FAMILY
    else:
        model = _model_arg(args)
        if not model:
            raise LowbitError("name a MODEL (e.g. qwen3.5-27b), --hf ORG/NAME, or --family qwen3.5")
        models = [model]
    results = [fit(m, b, args.weights, kv_k, kv_v, context, args.users, engine, args.mtp, args.vision,
                   force_context=args.force_context, host=args.host) for m in models]
    if args.format == "json":
        docs = [r.to_json() for r in results]
        print_json(docs[0] if len(docs) == 1 and not args.family else {"family": args.family, "results": docs})
        return 0
    fit_table(results, wide=args.wide or args.format != "table").render(args.format)
    return 0


def _gib(n: int | None) -> str:
    return "-" if n is None else fmt_bytes(n, "GiB")


def _offload(r: FitResult) -> str:
    off = r.offload
    if off.get("layers_on_cpu") is None:
        return "-"
    if off.get("layers_on_cpu") or off.get("expert_layers_on_cpu") or off.get("note", "").startswith("as asked"):
        return off.get("llama_args", "")
    return "none"


def _per_gpu(r: FitResult) -> str:
    """Each GPU's share at the row's context: weights + KV + state + runtime."""
    def share(g) -> str:
        return (f"{_gib(g.weights_bytes)} + {_gib(g.kv_bytes)} + {_gib(g.state_bytes)} + {_gib(g.runtime_bytes)} "
                f"= {_gib(g.total_bytes)}")

    shares = r.need.per_gpu
    if len(set(shares)) == 1:  # tensor parallel: every rank holds the same
        parts = [f"each of {len(shares)}: {share(shares[0])}"]
    else:
        parts = [f"#{i} {share(g)}" for i, g in enumerate(shares)]
    return f"per GPU {r.model} (GiB, weights + KV + state + runtime): " + "; ".join(parts)


def fit_table(results: list[FitResult], wide: bool) -> Table:
    """One row per model. The narrow table (80 columns) puts the offload arguments in notes under it."""
    r0 = results[0]
    b = r0.budget
    where = f"{b.name}" + (f" x {b.gpus}" if b.gpus > 1 else "")
    title = (f"Fit on {where} ({r0.engine}): usable {_gib(r0.limit)} GiB of {_gib(b.memory_bytes)} GiB per device; "
             f"{r0.weights} weights, KV {r0.kv_k}/{r0.kv_v}, {r0.users} user(s)")
    assumptions = [f"{k}: {v}" for k, v in r0.assumptions.items()]
    speeds = [r.speed for r in results if r.speed]
    speed_notes = ([ESTIMATE_NOTE.format(prompt=speeds[0].prompt)] + sources(speeds)) if speeds else []
    if wide:
        t = Table(title, ["model", "context", "fits", "need GiB", "headroom GiB", "max context", "max users",
                          "best weights", "offload (llama.cpp)", "decode tok/s", "prefill tok/s"], right_align_from=1)
        t.left_from = 8
        t.caption = "Assumptions: " + "; ".join(assumptions + speed_notes)
    else:
        t = Table(title, ["model", "context", "fits", "need\nGiB", "headroom\nGiB", "max\ncontext", "max\nusers",
                          "best\nweights"], right_align_from=1)
    notes, per_gpu = [], []
    for r in results:
        if r.max_context is None:
            mc = "none fits"
        elif r.limited_by == "model":
            mc = f"{r.max_context:,}" + (" (model max)" if wide else "*")
        else:
            mc = f"{r.max_context:,}"
        row = [r.model, f"{r.context:,}", "yes" if r.fits else "NO", _gib(r.need.device_bytes),
               _gib(r.limit - r.need.device_bytes), mc, "-" if r.max_users is None else f"{r.max_users:,}",
               r.best_weights or "none"]
        how = _offload(r)
        if wide:
            row.append(how)
            row += [tps(r.speed.decode_tps), tps(r.speed.prefill_tps)] if r.speed else ["-", "-"]
        elif how not in ("-", "none"):
            notes.append(f"offload {r.model}: {how} ({r.offload.get('note', '')})")
        if not wide and r.speed:
            notes.append(f"speed {r.model} (estimate): decode ~{tps(r.speed.decode_tps)} tok/s "
                         f"({r.speed.decode_bound}), prefill ~{tps(r.speed.prefill_tps)} tok/s "
                         f"({r.speed.prefill_bound})")
        t.add(*row)
        if r.need.per_gpu:
            per_gpu.append(_per_gpu(r))
    if wide and per_gpu:
        t.caption = "\n".join(per_gpu + [t.caption])
    if not wide:
        notes += per_gpu
        marks = ["* the model's trained maximum, not memory, stops the largest context."] \
            if any(r.limited_by == "model" for r in results) else []
        t.caption = "\n".join(notes + marks + ["Assumptions:"] + [f"- {a}" for a in assumptions + speed_notes])
    return t
