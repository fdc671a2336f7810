"""lowbit simulate: the Qwen3.5 family (or any models) under "today" and "1-bit + TurboQuant"."""

from __future__ import annotations

import argparse

from lowbit.commands._common import add_format, add_model_options, kv_pair
from lowbit.errors import LowbitError
from lowbit.report.render import Table, fmt_bytes, print_json, unit

RATIO_NOTE = "ratio: total of the first scenario over the last."


def caption(sim) -> str:
    """What each column is, from the plans' own provenance (it changes with --engine)."""
    prov = sim.plans[0].provenance()
    return (f"weights: {prov['weights_bytes']}. KV: {prov['kv_bytes']}. state: {prov['state_bytes']}. "
            f"runtime: {prov['runtime_bytes']}.")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None, help="comma-separated subset (built-in names, config.json or .gguf paths)")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME=WEIGHTS+KV",
                   help="define a column, repeatable; KV may be K/V, e.g. k8v4=Q4_K_M+q8_0/turbo4")
    add_model_options(p, weights_default=None)
    p.add_argument("--audit", action="store_true", help="put the seed article's claims beside the exact figures")
    p.add_argument("--quality", action="store_true", help="add measured KV-cache quality (where lowbit has measured it)")
    p.add_argument("--no-fits", action="store_true", help="leave out the devices each scenario fits")
    add_format(p)
    p.epilog = "Without --scenario: today (Q4_K_M + f16) vs 1bit-turbo (Q1_0 + turbo3); --weights/--kv redefine the second."


def scenarios_from(args: argparse.Namespace):
    from lowbit.planning.planner import ONEBIT_TURBO, TODAY, Scenario

    if args.scenario:
        if args.weights or args.kv or args.kv_k or args.kv_v:
            raise LowbitError("use either --scenario or --weights/--kv, not both")
        found = [Scenario.parse(s) for s in args.scenario]
        if len({s.name for s in found}) != len(found):
            raise LowbitError("scenario names must differ")
        return found
    if args.weights or args.kv or args.kv_k or args.kv_v:
        k, v = kv_pair(args, ONEBIT_TURBO.kv_k)
        custom = Scenario.parse(f"custom={(args.weights or ONEBIT_TURBO.weights)}+{k}/{v}")
        return [TODAY, custom]
    return [TODAY, ONEBIT_TURBO]


def run(args: argparse.Namespace) -> int:
    from lowbit.planning.simulate import simulate

    units = unit(args.units)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    sim = simulate(models, scenarios_from(args), args.context, args.sequences, args.pure, args.mtp, args.vision,
                   args.engine)
    if args.audit:
        from lowbit.report.audit import audit, audit_table

        result = audit()
        if args.format == "json":
            print_json(result)
        else:
            audit_table(result, units).render(args.format)
        return 0
    quality = None
    if args.quality:
        from lowbit.report.quality import kv_quality

        quality = kv_quality()
    fits = None if args.no_fits else _fits(sim)
    if args.format == "json":
        data = sim.to_json()
        if fits is not None:
            for row in data["rows"]:
                row["fits"] = fits[(row["model"], row["scenario"])]
            data["fits_note"] = FITS_NOTE
        if quality is not None:
            data["kv_quality"] = quality
        print_json(data)
        return 0
    table(sim, units, quality, fits).render(args.format)
    return 0


FITS_NOTE = ("fits: the smallest device of each class (phone, Mac, CPU RAM, consumer GPU, datacenter GPU) whose "
             "usable memory holds the total; estimated usable fractions per device in `lowbit devices`")


def _fits(sim) -> dict:
    from lowbit.planning.fit import fitting_devices

    return {(p.model, p.scenario.name): fitting_devices(p) for p in sim.plans}


def table(sim, units: str, quality: dict | None = None, fits: dict | None = None) -> Table:
    if len(sim.models()) == 1 and len(sim.scenarios) > 2:
        return _scenario_rows(sim, units, quality, fits)
    cols = ["model", "params"]
    for s in sim.scenarios:
        kv = s.kv_k if s.kv_k == s.kv_v else f"{s.kv_k}/{s.kv_v}"
        label = f"{s.name} ({s.weights}+{kv})"
        cols += [f"{label}\nweights", "KV", "state", "runtime", f"total {units}"]
        if quality is not None:
            cols.append("KV quality*")
        if fits is not None:
            cols.append("fits on")
    cols.append("ratio")
    t = Table(
        f"Memory at {sim.context:,} tokens x {sim.sequences} sequence(s), {units}",
        cols,
        caption=caption(sim) + " " + RATIO_NOTE + ("\n" + FITS_NOTE if fits else "")
        + ("\n* " + quality["label"] if quality else ""),
        right_align_from=1,
    )
    from lowbit.models.config import params_label

    for m in sim.models():
        row: list[str] = [m]
        first = sim.get(m, sim.scenarios[0].name)
        row.append(params_label(first.params_total) + (f" (A{params_label(first.params_active)})"
                                                        if first.params_active != first.params_total else ""))
        for s in sim.scenarios:
            p = sim.get(m, s.name)
            row += [fmt_bytes(p.weights_bytes, units), fmt_bytes(p.kv_bytes, units), fmt_bytes(p.state_bytes, units),
                    fmt_bytes(p.runtime_bytes, units), fmt_bytes(p.total_bytes, units)]
            if quality is not None:
                from lowbit.report.quality import quality_cell

                row.append(quality_cell(quality, s.kv_k, s.kv_v))
            if fits is not None:
                row.append(", ".join(fits[(m, s.name)]) or "none")
        row.append(f"{sim.ratio(m):.2f}x")
        t.add(*row)
    return t


def _scenario_rows(sim, units: str, quality: dict | None, fits: dict | None) -> Table:
    """One model under many scenarios reads better with a row per scenario."""
    from lowbit.models.config import params_label

    m = sim.models()[0]
    first = sim.get(m, sim.scenarios[0].name)
    cols = ["scenario", "weights", "KV K/V", "weights " + units, "KV", "state", "runtime", "total " + units,
            f"vs {sim.scenarios[0].name}"]
    cols += ["KV quality*"] if quality is not None else []
    cols += ["fits on"] if fits is not None else []
    t = Table(f"{m} ({params_label(first.params_total)} params) at {sim.context:,} tokens x {sim.sequences} sequence(s)",
              cols, caption=caption(sim) + ("\n" + FITS_NOTE if fits else "") + ("\n* " + quality["label"] if quality else ""),
              right_align_from=3)
    for s in sim.scenarios:
        p = sim.get(m, s.name)
        row = [s.name, s.weights, s.kv_k if s.kv_k == s.kv_v else f"{s.kv_k}/{s.kv_v}",
               fmt_bytes(p.weights_bytes, units), fmt_bytes(p.kv_bytes, units), fmt_bytes(p.state_bytes, units),
               fmt_bytes(p.runtime_bytes, units), fmt_bytes(p.total_bytes, units),
               f"{first.total_bytes / p.total_bytes:.2f}x"]
        if quality is not None:
            from lowbit.report.quality import quality_cell

            row.append(quality_cell(quality, s.kv_k, s.kv_v))
        if fits is not None:
            row.append(", ".join(fits[(m, s.name)]) or "none")
        t.add(*row)
    return t
