"""lowbit plan MODEL: one model under one scenario, by tensor class and tensor by tensor."""

from __future__ import annotations

import argparse

from lowbit.commands._common import (add_format, add_model_options, add_recipe_options, context_arg, engine_from,
                                    kv_pair, recipe_options)
from lowbit.devices import device
from lowbit.planning.planner import plan
from lowbit.planning.speed import DEFAULT_DEVICES, on_device
from lowbit.report.plan_table import plan_tables
from lowbit.report.render import print_json, unit
from lowbit.report.speed_table import plan_speed_table


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="built-in name (e.g. qwen3.5-122b-a10b), a config.json (or its folder), a .gguf "
                                 "(split files found), or a remote GGUF: https://.../FILE.gguf or "
                                 "hf://OWNER/REPO/FILE.gguf (header only)")
    add_model_options(p)
    add_recipe_options(p)
    p.add_argument("--tensors", action="store_true", help="list every tensor (table formats)")
    p.add_argument("--device", action="append", default=None, metavar="NAME",
                   help="device for the speed estimate, repeatable (default: " + ", ".join(DEFAULT_DEVICES)
                        + "; this-cpu: this machine after `lowbit devices --measure`)")
    p.add_argument("--host", default=None, help="the CPU that runs llama.cpp's offloaded layers in the speed "
                                                "estimate (default cpu-64gb)")
    add_format(p)


def run(args: argparse.Namespace) -> int:
    units = unit(args.units)
    k, v = kv_pair(args, "f16")
    p = plan(args.model, args.weights, kv_k=k, kv_v=v, context=context_arg(args, args.sequences),
             sequences=args.sequences, pure=args.pure, mtp=args.mtp, vision=args.vision, engine=engine_from(args),
             force_context=args.force_context, **recipe_options(args))
    # vLLM is modelled on GPUs only: without --device its default list keeps the GPU
    defaults = DEFAULT_DEVICES if p.engine.name == "llama.cpp" else tuple(
        d for d in DEFAULT_DEVICES if device(d).kind == "gpu")
    speeds = [on_device(p, d, host=args.host) for d in (args.device or defaults)]
    if args.format == "json":
        print_json({**p.to_json(), "speed": [s.to_json() for s in speeds]})
        return 0
    asked = args.context is not None or args.ctx_size is not None
    for t in plan_tables(p, units, tensors=args.tensors, context_given=asked):
        t.render(args.format)
    plan_speed_table(speeds).render(args.format)
    return 0

