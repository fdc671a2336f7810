"""Speed estimates as tables: per device for one plan (`lowbit plan`), per model x scenario x device
(`lowbit simulate --speed`). Every figure is an estimate; the caption names the efficiencies it assumed
and where they were measured."""

from __future__ import annotations

from lowbit.planning.simulate import Simulation
from lowbit.planning.speed import Speed
from lowbit.report.render import Table

ESTIMATE_NOTE = ("Estimates (lowbit.planning.speed; docs/speed.md): decode = bytes each new token reads (active "
                 "weights, KV at the context, recurrent state) over effective bandwidth, or its FLOPs over "
                 "effective compute where that is slower; prefill = FLOPs of a {prompt}-token prompt over effective "
                 "compute.")
NOFIT_NOTE = "* does not fit the device: the figure assumes it did."


def tps(x: float) -> str:
    """Tokens/s with sensible digits: 0.42, 7.3, 27, 1,224."""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(s: Speed | None) -> str:
    if s is None:
        return "-"
    return tps(s.decode_tps) + ("" if s.fits else "*")


def sources(speeds: list[Speed]) -> list[str]:
    """One line per device kind's efficiency source, and the notes, deduplicated."""
    seen: dict[str, str] = {}
    notes: list[str] = []
    for s in speeds:
        for dev, e in s.efficiency.items():
            seen.setdefault(e["kind"], e["source"])
        notes += [n for n in s.notes if n not in notes and "does not fit" not in n]
    return [f"{kind}: {src}" for kind, src in seen.items()] + notes


def plan_speed_table(speeds: list[Speed]) -> Table:
    s0 = speeds[0]
    t = Table(f"Speed (estimate) at {s0.context:,} tokens in the cache x {s0.sequences} sequence(s); prompt "
              f"{s0.prompt} tokens", ["device", "placement", "decode\ntok/s", "prefill\ntok/s", "decode\nbound",
                                      "prefill\nbound"], right_align_from=2)
    t.left_from = 4
    for s in speeds:
        t.add(s.device, s.placement, cell(s), tps(s.prefill_tps), s.decode_bound, s.prefill_bound)
    t.caption = "\n".join([ESTIMATE_NOTE.format(prompt=s0.prompt)] + ([NOFIT_NOTE] if not all(s.fits for s in speeds)
                                                                      else []) + ["Efficiencies:"]
                          + [f"- {line}" for line in sources(speeds)])
    return t


def simulate_speed_table(sim: Simulation, speeds: dict, devices: list[str]) -> Table:
    """Decode tokens/s: a row per model, a column per device x scenario."""
    cols = ["model"] + [f"{d}\n{s.name}" for d in devices for s in sim.scenarios]
    t = Table(f"Decode tokens/s (estimate) at {sim.context:,} tokens x {sim.sequences} sequence(s)", cols,
              right_align_from=1)
    used = []
    for m in sim.models():
        row = [m]
        for d in devices:
            for s in sim.scenarios:
                sp = speeds.get((m, s.name, d))
                used += [sp] if sp else []
                row.append(cell(sp))
        t.add(*row)
    bounds = sorted({f"{sp.device}: {sp.decode_bound}" for sp in used if sp.fits})
    t.caption = "\n".join([ESTIMATE_NOTE.format(prompt=used[0].prompt if used else 512), NOFIT_NOTE,
                           "Bound: " + "; ".join(bounds), "Efficiencies:"] + [f"- {line}" for line in sources(used)]
                          + ["Scenarios: " + "; ".join(s.label() for s in sim.scenarios) + "."])
    return t
