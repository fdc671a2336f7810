"""lowbit simulate: the Qwen3.5 family (or any models) under "today" and "1-bit + TurboQuant"."""

from __future__ import annotations

import argparse

from lowbit.commands._common import CONTEXT_POLICY, add_format, add_model_options, add_wide, context_arg, \
    engine_from, kv_pair
from lowbit.errors import LowbitError
from lowbit.planning.engines import engine_model
from lowbit.planning.scenario import ONEBIT_TURBO, TODAY, Scenario
from lowbit.planning.simulate import simulate
from lowbit.report.audit import audit, audit_table
from lowbit.report.quality import kv_quality
from lowbit.report.render import print_json, unit
from lowbit.report.simulate_table import simulate_json, simulate_tables

DEFAULT_SPEED_DEVICE = "rtx-4090"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None, help="comma-separated subset (built-in names, config.json or .gguf paths, "
                                                        "https:// or hf://OWNER/REPO/FILE.gguf)")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME=WEIGHTS+KV",
                   help="define a column, repeatable; KV may be K/V, e.g. k8v4=Q4_K_M+q8_0/turbo4; WEIGHTS may be "
                        "`stored` for .gguf models")
    add_model_options(p, weights_help="redefines the second scenario's weights")
    p.add_argument("--audit", action="store_true", help="put the seed article's claims beside the exact figures")
    p.add_argument("--quality", action="store_true",
                   help="add measured KV-cache quality (KL divergence, named with the small model it was measured on)")
    p.add_argument("--no-fits", action="store_true", help="leave out the devices each scenario fits")
    p.add_argument("--speed", metavar="DEVICES", default=None,
                   help="comma-separated devices for the decode/prefill speed estimate (with --wide: rtx-4090 unless "
                        "given; in every format); given, a decode tokens/s table per device and scenario is added")
    p.add_argument("--host", default=None, help="the CPU that runs llama.cpp's offloaded layers in the speed "
                                                "estimate (default cpu-64gb; this-cpu: this machine, measured)")
    add_wide(p, "weights, KV, state and runtime per scenario, every fitting device")
    add_format(p)
    p.epilog = ("Without --scenario: today (Q4_K_M + f16) vs 1bit-turbo (Q1_0 + turbo3); --weights/--kv redefine "
                "the second (with --engine transformers: BF16 weights, f16 K/V vs turbo3 or --kv). Without "
                "--context each model is planned at 262,144 tokens or its trained maximum if smaller. "
                + CONTEXT_POLICY)


def scenarios_from(args: argparse.Namespace, engine) -> list[Scenario]:
    float_only = engine_model(engine).default_weights  # transformers: it runs float checkpoints only
    if float_only and not args.scenario:  # the same weights, f16 against packed K/V
        k, v = kv_pair(args, ONEBIT_TURBO.k.name)
        w = args.weights or float_only
        return [Scenario.of(w, "f16", name="f16"), Scenario.of(w, k, v, name=f"{k}/{v}" if k != v else k)]
    if args.scenario:
        if args.weights or args.kv or args.kv_k or args.kv_v:
            raise LowbitError("use either --scenario or --weights/--kv, not both")
        found = [Scenario.parse(s) for s in args.scenario]
        if len({s.name for s in found}) != len(found):
            raise LowbitError("scenario names must differ")
        return found
    if args.weights or args.kv or args.kv_k or args.kv_v:
        k, v = kv_pair(args, ONEBIT_TURBO.k.name)
        return [TODAY, Scenario.of(args.weights or ONEBIT_TURBO.mix, k, v, name="custom")]
    return [TODAY, ONEBIT_TURBO]


def run(args: argparse.Namespace) -> int:
    units = unit(args.units)
    engine = engine_from(args)
    scenarios = scenarios_from(args, engine)  # bad input fails the same with or without --audit
    if args.audit:  # the seed's claims at their own scenarios: nothing else is computed
        result = audit()
        if args.format == "json":
            print_json(result)
        else:
            audit_table(result, units).render(args.format)
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    sim = simulate(models, scenarios, context_arg(args, args.sequences), args.sequences, args.pure, args.mtp,
                   args.vision, engine, force_context=args.force_context)
    quality = kv_quality() if args.quality else None
    fits = None if args.no_fits else sim.fitting_devices()
    wide = args.wide or args.format != "table"
    devices = [d.strip() for d in (args.speed or DEFAULT_SPEED_DEVICE).split(",") if d.strip()]
    # an estimate per plan and device costs more than the plan itself: only when asked (--wide or --speed)
    speeds = sim.speeds(devices, args.host) if (args.wide or args.speed) else None
    if args.format == "json":
        print_json(simulate_json(sim, quality, fits, speeds))
        return 0
    for t in simulate_tables(sim, units, quality, fits, wide=wide, speeds=speeds, speed_devices=devices,
                             speed_table=bool(args.speed)):
        t.render(args.format)
    return 0
