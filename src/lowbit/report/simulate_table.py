"""What `lowbit simulate` prints: the simulation as a table (one column group per scenario, or one row per
scenario for a single model) or as JSON, with the devices each plan fits and measured KV quality if asked."""

from __future__ import annotations

from lowbit.models.config import params_label
from lowbit.planning.simulate import Simulation
from lowbit.report.quality import quality_cell
from lowbit.report.render import Table, fmt_bytes

RATIO_NOTE = "ratio: total of the first scenario over the last."
FITS_NOTE = ("fits: the smallest device of each class (phone, Mac, CPU RAM, consumer GPU, datacenter GPU) whose "
             "usable memory holds the total; estimated usable fractions per device in `lowbit devices`")


def caption(sim: Simulation) -> str:
    """What each column is, from the plans' own provenance (it changes with --engine)."""
    prov = sim.plans[0].provenance()
    return (f"weights: {prov['weights_bytes']}. KV: {prov['kv_bytes']}. state: {prov['state_bytes']}. "
            f"runtime: {prov['runtime_bytes']}.")


def simulate_json(sim: Simulation, quality: dict | None = None, fits: dict | None = None) -> dict:
    data = sim.to_json()
    if fits is not None:
        for row in data["rows"]:
            row["fits"] = fits[(row["model"], row["scenario"])]
        data["fits_note"] = FITS_NOTE
    if quality is not None:
        data["kv_quality"] = quality
    return data


def simulate_table(sim: Simulation, units: str, quality: dict | None = None, fits: dict | None = None) -> Table:
    if len(sim.models()) == 1 and len(sim.scenarios) > 2:
        return _scenario_rows(sim, units, quality, fits)
    cols = ["model", "params"]
    for s in sim.scenarios:
        cols += [f"{s.label()}\nweights", "KV", "state", "runtime", f"total {units}"]
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
                row.append(quality_cell(quality, s.k.name, s.v.name))
            if fits is not None:
                row.append(", ".join(fits[(m, s.name)]) or "none")
        row.append(f"{sim.ratio(m):.2f}x")
        t.add(*row)
    return t


def _scenario_rows(sim: Simulation, units: str, quality: dict | None, fits: dict | None) -> Table:
    """One model under many scenarios reads better with a row per scenario."""
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
        row = [s.name, s.mix.name, s.kv_label(),
               fmt_bytes(p.weights_bytes, units), fmt_bytes(p.kv_bytes, units), fmt_bytes(p.state_bytes, units),
               fmt_bytes(p.runtime_bytes, units), fmt_bytes(p.total_bytes, units),
               f"{first.total_bytes / p.total_bytes:.2f}x"]
        if quality is not None:
            row.append(quality_cell(quality, s.k.name, s.v.name))
        if fits is not None:
            row.append(", ".join(fits[(m, s.name)]) or "none")
        t.add(*row)
    return t
