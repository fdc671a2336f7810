"""Calibrate the CPU efficiencies of the speed model on synthetic models, then check it on the real ones.

    python benchmarks/speed_check.py --runs docs/speed_results/llamacpp_cpu.json \\
        --profile docs/speed_results/device_profile.json --models-dir /work/speed-models \\
        --synth-dir /work/speed-synth --write-efficiency --out docs/speed_results/check.json

Calibration (the `calibration` runs of benchmarks/speed_llamacpp.py, synthetic llama models with every
matrix of one weight type): each weight type's kernel rate (decode and prefill, as a fraction of the
profile's f32 matrix rate) from its wide model; each KV type's attention rate from the wide Q4_0 model at
depth. The narrow model's runs are predicted, not used: it fits in the caches (see docs/speed.md).
Nothing is fitted to the real models: the `check` runs (smollm2-135m and gemma3-270m across weight
types, KV types and depths) are predictions, printed beside the measurement with the error. With --write-efficiency the cpu section of lowbit/planning/speed_efficiency.json is
rewritten from this calibration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

from lowbit.devices import this_cpu
from lowbit.planning import speed
from lowbit.planning.planner import plan

EFF_PATH = Path(speed.__file__).with_name(speed.EFFICIENCY_FILE)
KV_TYPES = ("f16", "q8_0", "q4_0")


def _plan(path: Path, run: dict):
    ctx = max(256, run["depth"] + run["n"] + 1)
    return plan(str(path), kv_k=run["kv"], kv_v=run["kv"], context=ctx)


def _eff(tab: dict) -> speed.Efficiency:
    return speed.Efficiency("cpu", tab["bandwidth"], tab["decode"], tab["prefill"], tab["attention_decode"],
                            tab["attention_prefill"], tab.get("layer_seconds_decode", 0.0),
                            tab.get("layer_seconds_prefill", 0.0), {}, "calibration")


def predict_seconds(p, run: dict, dev, tab: dict) -> tuple[float, str]:
    """Seconds of one llama-bench test (all its tokens) and what bounds it."""
    eff = _eff(tab)
    notes: set[str] = set()
    n_layers = p.config.num_layers
    if run["test"] == "tg":  # n steps; attention at the middle context stands for their mean
        items = speed.decode_work(p, context=run["depth"] + run["n"] // 2, sequences=1)
        part = speed._time(items, dev, eff, "decode", n_layers, 1, notes)
        return part.seconds * run["n"], speed._bound([part])
    items = speed.prefill_work(p, run["n"], run["depth"])
    ub = -(-run["n"] // 512)
    part = speed._time(items, dev, eff, "prefill", n_layers, ub, notes)
    return part.seconds, speed._bound([part])


def solve(fn, target: float, lo: float = 1e-3, hi: float = 1e2) -> float | None:
    """The x with fn(x) == target for a decreasing fn, by bisection in log space; None if fn(hi) > target
    (the measurement is faster than the bandwidth side alone allows)."""
    if fn(hi) > target:
        return None
    if fn(lo) < target:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if fn(mid) > target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def measured_seconds(run: dict) -> float:
    return run["n"] / run["cpu_ts"]


def calibrate(runs: list[dict], synth_dir: Path, dev) -> tuple[dict, dict]:
    cal = [r for r in runs if r["role"] == "calibration"]
    by = {(r["file"], r["test"], r["depth"], r["kv"]): r for r in cal}
    types = sorted({r["file"].split("-", 2)[2].removesuffix(".gguf") for r in cal if r["file"].startswith("synth-wide")})
    plans = {}

    def pl(r):
        key = (r["file"], r["kv"], r["depth"] + r["n"])
        if key not in plans:
            plans[key] = _plan(synth_dir / r["file"], r)
        return plans[key]

    tab = {"bandwidth": {"default": 0.75, "measured": 1.0}, "decode": {}, "prefill": {},
           "attention_decode": {"default": 0.5}, "attention_prefill": {"default": 0.5},
           "layer_seconds_decode": 0.0, "layer_seconds_prefill": 0.0}
    info: dict = {"memory_bound": []}
    for test, phase, key_c in (("tg", "decode", "layer_seconds_decode"), ("pp", "prefill", "layer_seconds_prefill")):
        def eta_for(t: str, c: float) -> float | None:
            r = by[(f"synth-wide-{t}.gguf", test, 0, "f16")]
            trial = json.loads(json.dumps(tab))
            trial[key_c] = c

            def f(x: float) -> float:
                trial[phase][t] = x
                return predict_seconds(pl(r), r, dev, trial)[0]
            return solve(f, measured_seconds(r))

        # No per-layer constant is fitted: the narrow model, which was run to separate one, is small enough
        # to stay in the caches and runs at a different rate per weight (docs/speed.md), so the constant it
        # implies would be the cache's, not the engine's. Its runs are reported, not used.
        tab[key_c] = 0.0
        for t in types:
            eta = eta_for(t, 0.0)
            if eta is None:
                info["memory_bound"].append(f"{t} {phase}")
                eta = 100.0  # the kernel never limits: bandwidth does
            tab[phase][t] = eta
        tab[phase]["default"] = tab[phase].get("Q4_0", 0.5)
    for test, phase, depth in (("tg", "attention_decode", 2048), ("pp", "attention_prefill", 1024)):
        for kv in KV_TYPES:
            r = by.get(("synth-wide-Q4_0.gguf", test, depth, kv))
            if r is None:
                continue
            trial = json.loads(json.dumps(tab))

            def f(x: float) -> float:
                trial[phase][kv] = x
                return predict_seconds(pl(r), r, dev, trial)[0]
            eta = solve(f, measured_seconds(r))
            tab[phase][kv] = eta if eta is not None else 100.0
        tab[phase]["default"] = tab[phase].get("f16", 0.5)
    return tab, info


def check(runs: list[dict], models_dir: Path, synth_dir: Path, dev, tab: dict) -> list[dict]:
    rows = []
    for r in runs:
        path = (synth_dir if r["file"].startswith("synth-") else models_dir) / r["file"]
        p = _plan(path, r)
        secs, bound = predict_seconds(p, r, dev, tab)
        pred = r["n"] / secs
        rows.append({"role": r["role"], "file": r["file"], "test": r["test"], "n": r["n"], "depth": r["depth"],
                     "kv": r["kv"], "measured_cpu_ts": round(r["cpu_ts"], 2), "passes": r.get("passes", 1),
                     "measured_range": [round(x, 2) for x in r.get("cpu_ts_range", [r["cpu_ts"]] * 2)],
                     "wall_avg_ts": round(r["wall_avg_ts"], 2),
                     "predicted_ts": round(pred, 2), "error": round(pred / r["cpu_ts"] - 1, 4), "bound": bound,
                     "loadavg": round(r["loadavg_before"][0], 1)})
    return rows


def median_runs(runs: list[dict]) -> list[dict]:
    """One run per case: the median tokens per CPU-second over its passes, with their spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["file"], r["test"], r["n"], r["depth"], r["kv"], r["threads"]), []).append(r)
    out = []
    for group in groups.values():
        vals = sorted(r["cpu_ts"] for r in group)
        mid = len(vals) // 2
        med = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
        walls = sorted(r["wall_avg_ts"] for r in group)
        out.append(dict(group[0], cpu_ts=med, passes=len(vals), cpu_ts_range=[vals[0], vals[-1]],
                        wall_avg_ts=walls[len(walls) // 2]))
    return out


def markdown(rows: list[dict]) -> str:
    out = ["| model file | test | depth | KV | measured tok/s (CPU time, median) | passes: range | wall tok/s | "
           "predicted | error | bound |",
           "|---|---|--:|---|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        lo, hi = r["measured_range"]
        out.append(f"| {r['file'].removesuffix('.gguf')} | {r['test']}{r['n']} | {r['depth']} | {r['kv']} | "
                   f"{r['measured_cpu_ts']:.1f} | {r['passes']}: {lo:.1f}-{hi:.1f} | {r['wall_avg_ts']:.1f} | "
                   f"{r['predicted_ts']:.1f} | {r['error'] * 100:+.0f}% | {r['bound']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--synth-dir", type=Path, required=True)
    ap.add_argument("--write-efficiency", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    doc = json.loads(args.runs.read_text())
    runs = median_runs([r for r in doc["runs"] if r.get("cpu_ts")])
    profile = json.loads(args.profile.read_text())
    dev = this_cpu(threads=1, profile=profile)
    tab, info = calibrate(runs, args.synth_dir, dev)
    rows = check(runs, args.models_dir, args.synth_dir, dev, tab)
    chk = [r for r in rows if r["role"] == "check"]
    summary = {t: max((abs(r["error"]) for r in chk if r["test"] == t), default=None) for t in ("tg", "pp")}
    source = (f"llama-bench, llama.cpp {doc['llama_cpp'].split('commit ')[-1].split(')')[0]}, CPU backend, "
              f"1 thread, -fa 1, on {doc['machine']['cpu']} ({doc['machine']['logical_cpus']} vCPUs, shared), "
              f"{doc['date'][:10]}; tokens per CPU-second (benchmarks/speed_llamacpp.py); calibrated on synthetic "
              f"llama models by benchmarks/speed_check.py; rates relative to this machine's f32 matmul "
              f"({profile['flops'] / 1e9:.0f} GFLOP/s per thread, numpy)")
    if args.write_efficiency:
        eff = json.loads(EFF_PATH.read_text())
        cpu = {"source": source, **tab,
               "notes": {"bandwidth": "measured: this-cpu's streaming read is its effective bandwidth (1.0); a "
                                      "catalog CPU's peak DDR figure is taken at 0.75 (assumed, typical of STREAM)",
                         "rates": "decode/prefill: fraction of the f32 matmul FLOP rate each weight type's kernel "
                                  "reaches (integer dot products can exceed 1); 100 = never the limit",
                         "memory_bound": ", ".join(info["memory_bound"]) or "none",
                         "layer_seconds": "fixed cost per layer per decode step / per prompt micro-batch on one "
                                          "thread of this machine, used as is for other CPUs",
                         "check": f"largest error on the real models: decode {summary['tg']:.0%}, prefill "
                                  f"{summary['pp']:.0%} (docs/speed.md)"}}
        eff["engines"]["llama.cpp"]["kinds"]["cpu"] = cpu
        with tempfile.NamedTemporaryFile("w", dir=EFF_PATH.parent, delete=False, suffix=".tmp") as fh:
            json.dump(eff, fh, indent=1)
            fh.write("\n")
        os.replace(fh.name, EFF_PATH)
    result = {"source": source, "efficiency": tab, "info": info, "summary_max_abs_error": summary, "rows": rows,
              "profile": profile, "runs_date": doc["date"], "machine": doc["machine"], "llama_cpp": doc["llama_cpp"]}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in tab.items()}, indent=1))
    print(markdown(rows))
    print(f"largest |error| on the check runs: decode {summary['tg']}, prefill {summary['pp']}")


if __name__ == "__main__":
    main()
