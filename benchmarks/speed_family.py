"""The seed's speed question: the Qwen3.5 family today vs 1-bit + TurboQuant, decode tokens/s per device.

    python benchmarks/speed_family.py [--context 32768] [--devices rtx-4090,h100-80gb,m4-max-128gb,cpu-64gb]

Prints a markdown table (estimates from lowbit.planning.speed, placed as `lowbit fit` places them: a
model that does not fit a GPU keeps experts or layers in host RAM, a generic cpu-64gb host) with what
bounds each figure, and the speed-up of the second scenario over the first.
"""

from __future__ import annotations

import argparse

from lowbit.planning.simulate import simulate
from lowbit.report.speed_table import tps

SHORT = {"memory": "mem", "compute": "compute", "per-layer overhead": "overhead"}


def bound(s) -> str:
    b = s.decode_bound
    if "host part" in b:
        return "host " + b.split(" ")[0]
    return SHORT.get(b, b)


def where(s) -> str:
    return "fits" if s.placement == "all on the device" else s.placement


def cell(x, y) -> str:
    """today -> 1-bit: tokens/s (bound, placement) and the speed-up; * marks a plan that does not fit."""
    def one(s) -> str:
        return f"{tps(s.decode_tps)}{'' if s.fits else '*'} ({bound(s)}, {where(s)})"
    return f"{one(x)} → {one(y)}: {y.decode_tps / x.decode_tps:.1f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--devices", default="rtx-4090,h100-80gb,m4-max-128gb,cpu-64gb")
    args = ap.parse_args()
    devices = args.devices.split(",")
    sim = simulate(context=args.context)
    speeds = sim.speeds(devices)
    a, b = sim.scenarios[0].name, sim.scenarios[-1].name
    print("| model | " + " | ".join(f"{d}: {a} → {b}" for d in devices) + " |")
    print("|---|" + "---|" * len(devices))
    for m in sim.models():
        print(f"| {m} | " + " | ".join(cell(speeds[(m, a, d)], speeds[(m, b, d)]) for d in devices) + " |")


if __name__ == "__main__":
    main()
