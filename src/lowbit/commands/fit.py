"""lowbit fit MODEL --device D: does it fit, largest context, most users, best weight format, offload."""

from __future__ import annotations

import argparse

from lowbit.commands._common import count
from lowbit.devices import budget
from lowbit.errors import LowbitError
from lowbit.models.catalog import QWEN35_FAMILY
from lowbit.models.hub import resolve_hf
from lowbit.planning.fit import FitResult, fit
from lowbit.planning.stored import stored_fit
from lowbit.report.render import Table, fmt_bytes, print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="built-in name (e.g. qwen3.5-27b), a config.json or checkpoint folder, "
                                            "a .gguf, or https://.../FILE.gguf or hf://OWNER/REPO/FILE.gguf (header only)")
    p.add_argument("--family", help="every model of a family instead of one MODEL (qwen3.5)")
    p.add_argument("--hf", metavar="ORG/NAME", help="fetch config.json from the Hugging Face Hub (online, on request)")
    p.add_argument("--device", help="a device from `lowbit devices` (e.g. rtx-4090, m4-max-64gb, phone-8gb)")
    p.add_argument("--memory", help="a memory budget instead of a device: 24GB (10^9 bytes) or 24GiB (2^30 bytes)")
    p.add_argument("--gpus", type=int, default=1, help="identical GPUs to split over (llama.cpp: layers; vLLM: "
                                                       "tensor parallel)")
    p.add_argument("--engine", default="llama.cpp", help="llama.cpp (default) or vllm")
    p.add_argument("--weights", default="Q4_K_M", help="weight format: a llama.cpp mix (default Q4_K_M), or `stored` "
                                                       "for a safetensors checkpoint as it is")
    p.add_argument("--kv", default="f16", help="KV-cache format for K and V (default f16; q8_0, turbo3, ...)")
    p.add_argument("--kv-k", default=None, help="KV-cache format for K only")
    p.add_argument("--kv-v", default=None, help="KV-cache format for V only")
    p.add_argument("--context", type=count, default=None,
                   help="tokens per user (default 32768, or the model's maximum if smaller; 128k = 131072)")
    p.add_argument("--users", type=count, default=1, help="concurrent sequences, each with the full context")
    p.add_argument("--mtp", action="store_true", help="add the MTP layer and its KV cache")
    p.add_argument("--vision", action="store_true", help="add the vision tower (llama.cpp's mmproj, F16)")
    p.add_argument("--format", default="table", choices=("table", "json", "markdown"), help="output (default table)")


def _model_arg(args: argparse.Namespace):
    if args.hf:
        if args.model:
            raise LowbitError("give either MODEL or --hf ORG/NAME, not both")
        return resolve_hf(args.hf)
    return args.model


def run(args: argparse.Namespace) -> int:
    b = budget(args.device, args.memory, args.gpus)
    kv_k, kv_v = (args.kv_k or args.kv), (args.kv_v or args.kv)
    if args.family:
        if args.model or args.hf:
            raise LowbitError("give either MODEL or --family, not both")
        if args.family.lower() not in ("qwen3.5", "qwen35"):
            raise LowbitError(f"unknown family {args.family!r}; known: qwen3.5")
        results = [_fit(m, b, args, kv_k, kv_v) for m in QWEN35_FAMILY]
    else:
        model = _model_arg(args)
        if not model:
            raise LowbitError("name a MODEL (e.g. qwen3.5-27b), --hf ORG/NAME, or --family qwen3.5")
        results = [_fit(model, b, args, kv_k, kv_v)]
    if args.format == "json":
        docs = [r.to_json() for r in results]
        print_json(docs[0] if len(docs) == 1 and not args.family else {"family": args.family, "results": docs})
        return 0
    _table(results, args.format)
    return 0


def _fit(model, b, args, kv_k, kv_v) -> FitResult:
    if str(args.weights).lower() == "stored":
        return stored_fit(model, b, kv_k, kv_v, args.context, args.users, args.engine)
    return fit(model, b, args.weights, kv_k, kv_v, args.context, args.users, args.engine, args.mtp, args.vision)


def _gib(n: int | None) -> str:
    return "-" if n is None else fmt_bytes(n, "GiB")


def _table(results: list[FitResult], fmt: str) -> None:
    r0 = results[0]
    b = r0.budget
    where = f"{b.name}" + (f" x {b.gpus}" if b.gpus > 1 else "")
    t = Table(
        f"Fit on {where} ({r0.engine}): usable {_gib(r0.limit)} GiB of {_gib(b.memory_bytes)} GiB per device; "
        f"{r0.weights} weights, KV {r0.kv_k}/{r0.kv_v}, {r0.users} user(s)",
        ["model", "context", "fits", "need GiB", "headroom GiB", "max context", "max users", "best weights",
         "offload (llama.cpp)"],
        right_align_from=1,
    )
    for r in results:
        off = r.offload
        if off.get("layers_on_cpu") is None:
            how = "-"
        elif off.get("layers_on_cpu") or off.get("expert_layers_on_cpu"):
            how = off.get("llama_args", "")
        else:
            how = "none"
        mc = "none fits" if r.max_context is None else f"{r.max_context:,}" + (" (model max)" if r.limited_by ==
                                                                               "model" else "")
        t.add(r.model, f"{r.context:,}", "yes" if r.fits else "NO", _gib(r.need.device_bytes),
              _gib(r.limit - r.need.device_bytes), mc, "-" if r.max_users is None else f"{r.max_users:,}",
              r.best_weights or "none", how)
    t.caption = "Assumptions: " + "; ".join(f"{k}: {v}" for k, v in r0.assumptions.items())
    t.width = 170
    t.render(fmt)
