"""What `lowbit simulate` prints: the simulation as a table or as JSON, with the devices each plan fits and
measured KV quality if asked.

The default table is what a person needs at a glance and fits 80 columns: per model each scenario's
total, the ratio and the smallest device that holds each; `--wide` (and csv, markdown) gives one column
group per scenario (weights, KV, state, runtime, total, every fitting device). Measured KV quality is a
property of a cache format measured on small real models, so it gets its own table naming them.
"""

from __future__ import annotations

from lowbit.models.config import params_label
from lowbit.planning.simulate import Simulation
from lowbit.report.quality import quality_cell, quality_table
from lowbit.report.render import NBSP, Table, fmt_bytes
from lowbit.report.speed_table import ESTIMATE_NOTE, NOFIT_NOTE, cell as speed_cell, simulate_speed_table

RATIO_NOTE = "ratio: total of the first scenario over the last."
FITS_NOTE = ("fits: the smallest device of each class (phone, Mac, CPU RAM, consumer GPU, datacenter GPU) whose "
             "usable memory holds the total; estimated usable fractions per device in `lowbit devices`")
FIT_NOTE = ("fits on: the smallest device whose usable memory holds the total (estimated; `lowbit devices`); "
            "--wide lists the smallest of each class (phone, Mac, CPU RAM, consumer GPU, datacenter GPU).")


def caption(sim: Simulation) -> str:
    """What each column is, from the plans' own provenance (it changes with --engine)."""
    prov = sim.plans[0].provenance()
    return (f"weights: {prov['weights_bytes']}. KV: {prov['kv_bytes']}. state: {prov['state_bytes']}. "
            f"runtime: {prov['runtime_bytes']}.")


def context_note(sim: Simulation) -> str:
    """The models planned at their trained maximum, fewer tokens than the table's context."""
    short = sim.shortened()
    if not short:
        return ""
    return ("Planned at the model's trained maximum (no --context given): "
            + ", ".join(f"{m} {c:,} tokens" for m, c in short.items()) + ".")


def simulate_json(sim: Simulation, quality: dict | None = None, fits: dict | None = None,
                  speeds: dict | None = None) -> dict:
    data = sim.to_json()
    if fits is not None:
        for row in data["rows"]:
            row["fits"] = fits[(row["model"], row["scenario"])]
        data["fits_note"] = FITS_NOTE
    if speeds:
        for row in data["rows"]:
            row["speed"] = {d: s.to_json() for (m, sc, d), s in speeds.items()
                            if m == row["model"] and sc == row["scenario"]}
    if quality is not None:
        data["kv_quality"] = quality
    return data


def simulate_tables(sim: Simulation, units: str, quality: dict | None = None, fits: dict | None = None,
                    wide: bool = True, speeds: dict | None = None, speed_devices: list[str] | None = None,
                    speed_table: bool = False) -> list[Table]:
    """The tables `lowbit simulate` prints: the memory table (narrow, or `wide`, which carries a decode
    tokens/s column per scenario and speed device), KV quality if asked, and the speed table if asked."""
    if wide:
        main = simulate_table(sim, units, quality, fits, speeds, speed_devices)
    elif len(sim.models()) == 1 and len(sim.scenarios) > 2:
        main = _scenario_rows_narrow(sim, units, fits)
    else:
        main = _narrow(sim, units, fits)
    tables = [main]
    if quality is not None and not wide:
        tables.append(quality_table(quality, sim.scenarios))
    if speed_table and speeds:
        tables.append(simulate_speed_table(sim, speeds, speed_devices or []))
    return tables


def _title(sim: Simulation, units: str) -> str:
    return f"Memory at {sim.context:,} tokens x {sim.sequences} sequence(s), {units}"


def _smallest(fits: dict, model: str, scenario: str) -> str:
    names = fits[(model, scenario)]
    return names[0] if names else "none"


def _narrow(sim: Simulation, units: str, fits: dict | None) -> Table:
    cols = ["model"] + [f"{s.name}\n{units}" for s in sim.scenarios] + ["ratio"]
    cols += [f"{s.name}\nfits on" for s in sim.scenarios] if fits is not None else []
    notes = [caption(sim), RATIO_NOTE + " Scenarios: " + "; ".join(s.label() for s in sim.scenarios) + "."]
    notes += [FIT_NOTE] if fits is not None else []
    notes += [n for n in [context_note(sim)] if n]
    t = Table(_title(sim, units), cols, caption="\n".join(notes), right_align_from=1)
    for m in sim.models():
        row = [m] + [fmt_bytes(sim.get(m, s.name).total_bytes, units) for s in sim.scenarios]
        row.append(f"{sim.ratio(m):.2f}x")
        if fits is not None:
            row += [_smallest(fits, m, s.name) for s in sim.scenarios]
        t.add(*row)
    if fits is not None:  # device names are text
        t.left_from = len(sim.scenarios) + 2
    return t


def _scenario_rows_narrow(sim: Simulation, units: str, fits: dict | None) -> Table:
    m = sim.models()[0]
    first = sim.get(m, sim.scenarios[0].name)
    cols = ["scenario", "weights", "KV K/V", f"total {units}", f"vs {sim.scenarios[0].name}"]
    cols += ["fits on"] if fits is not None else []
    notes = [caption(sim)] + ([FIT_NOTE] if fits is not None else []) + [n for n in [context_note(sim)] if n]
    t = Table(f"{m} ({params_label(first.params_total)} params) at {first.context:,} tokens x {sim.sequences} "
              "sequence(s)", cols, caption="\n".join(notes), right_align_from=3)
    for s in sim.scenarios:
        p = sim.get(m, s.name)
        row = [s.name, s.mix.name, s.kv_label(), fmt_bytes(p.total_bytes, units),
               f"{first.total_bytes / p.total_bytes:.2f}x"]
        if fits is not None:
            row.append(_smallest(fits, m, s.name))
        t.add(*row)
    if fits is not None:
        t.left_from = 5
    return t


def simulate_table(sim: Simulation, units: str, quality: dict | None = None, fits: dict | None = None,
                   speeds: dict | None = None, speed_devices: list[str] | None = None) -> Table:
    """Every column: per scenario weights, KV, state, runtime, total (and quality, fitting devices, decode
    tokens/s on each speed device)."""
    devices = list(speed_devices or []) if speeds else []
    if len(sim.models()) == 1 and len(sim.scenarios) > 2:
        return _scenario_rows(sim, units, quality, fits, speeds, devices)
    cols = ["model", "params"]
    for s in sim.scenarios:
        cols += [f"{s.label()}\nweights", "KV", "state", "runtime", f"total {units}"]
        if quality is not None:
            cols.append("KV quality*")
        if fits is not None:
            cols.append("fits on")
        cols += [f"decode tok/s\n{d}" for d in devices]
    cols.append("ratio")
    notes = [caption(sim) + " " + RATIO_NOTE] + ([FITS_NOTE] if fits else []) + \
        (["* " + quality["label"]] if quality else []) + [n for n in [context_note(sim)] if n] + \
        ([_speed_note(speeds)] if devices else [])
    t = Table(_title(sim, units), cols, caption="\n".join(notes), right_align_from=1)
    for m in sim.models():
        row: list[str] = [m]
        first = sim.get(m, sim.scenarios[0].name)
        row.append(params_label(first.params_total) + (f"{NBSP}(A{params_label(first.params_active)})"
                                                        if first.params_active != first.params_total else ""))
        for s in sim.scenarios:
            p = sim.get(m, s.name)
            row += [fmt_bytes(p.weights_bytes, units), fmt_bytes(p.kv_bytes, units), fmt_bytes(p.state_bytes, units),
                    fmt_bytes(p.runtime_bytes, units), fmt_bytes(p.total_bytes, units)]
            if quality is not None:
                row.append(quality_cell(quality, s.k.name, s.v.name))
            if fits is not None:
                row.append(", ".join(fits[(m, s.name)]) or "none")
            row += [speed_cell(speeds.get((m, s.name, d))) for d in devices]
        row.append(f"{sim.ratio(m):.2f}x")
        t.add(*row)
    return t


def _speed_note(speeds: dict) -> str:
    any_speed = next(iter(speeds.values()))
    return ("decode tok/s: " + ESTIMATE_NOTE.format(prompt=any_speed.prompt) + " " + NOFIT_NOTE + " Efficiencies: "
            + "; ".join(sorted({f"{e['kind']}: {e['source']}" for s in speeds.values()
                                for e in s.efficiency.values()})))


def _scenario_rows(sim: Simulation, units: str, quality: dict | None, fits: dict | None,
                   speeds: dict | None = None, devices: list[str] | None = None) -> Table:
    """One model under many scenarios reads better with a row per scenario."""
    devices = devices or []
    m = sim.models()[0]
    first = sim.get(m, sim.scenarios[0].name)
    cols = ["scenario", "weights", "KV K/V", "weights " + units, "KV", "state", "runtime", "total " + units,
            f"vs {sim.scenarios[0].name}"]
    cols += ["KV quality*"] if quality is not None else []
    cols += ["fits on"] if fits is not None else []
    cols += [f"decode tok/s\n{d}" for d in devices]
    notes = [caption(sim)] + ([FITS_NOTE] if fits else []) + (["* " + quality["label"]] if quality else []) + \
        [n for n in [context_note(sim)] if n] + ([_speed_note(speeds)] if devices else [])
    t = Table(f"{m} ({params_label(first.params_total)} params) at {first.context:,} tokens x {sim.sequences} "
              "sequence(s)", cols, caption="\n".join(notes), right_align_from=3)
    for s in sim.scenarios:
        p = sim.get(m, s.name)
        row = [s.name, s.mix.name, s.kv_label(),
               fmt_bytes(p.weights_bytes, units), fmt_bytes(p.kv_bytes, units), fmt_bytes(p.state_bytes, units),
               fmt_bytes(p.runtime_bytes, units), fmt_bytes(p.total_bytes, units),
               f"{first.total_bytes / p.total_bytes:.2f}x"]
        if quality is not None:
            row.append(quality_cell(quality, s.k.name, s.v.name))
        if fits is not None:
            row.append(", ".join(fits[(m, s.name)]) or "none")
        row += [speed_cell(speeds.get((m, s.name, d))) for d in devices]
        t.add(*row)
    return t
