"""Whole-process latency of `lowbit simulate`, beside `llmfit plan` when it is installed.

Each command runs N times (default 7) as a fresh process; the median wall time is reported, with the
ratio against the competitor measured in the same run and the machine it ran on.

    python benchmarks/cli_latency.py [--runs N] [--format json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time


def median_wall(cmd: list[str], runs: int) -> float | None:
    times = []
    for _ in range(runs + 1):  # the first run warms the file cache and is dropped
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            return None
    return statistics.median(times[1:])


def _bin(name: str) -> str | None:
    """The installed script itself, not a version-manager shim (pyenv's adds ~100 ms to both sides)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else shutil.which(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--format", choices=["table", "json"], default="table")
    args = ap.parse_args()
    lowbit = _bin("lowbit")
    cases = {
        "lowbit simulate (8 models x 2 scenarios)": [lowbit, "simulate"],
        "lowbit simulate --format json": [lowbit, "simulate", "--format", "json"],
        "lowbit plan qwen3.5-122b-a10b": [lowbit, "plan", "qwen3.5-122b-a10b"],
    }
    llmfit = _bin("llmfit")
    if llmfit:
        cases["llmfit plan (one model)"] = [llmfit, "plan", "--context", "8192", "Qwen/Qwen3-8B"]
    results = {name: median_wall(cmd, args.runs) for name, cmd in cases.items()}
    base = results.get("llmfit plan (one model)")
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    rows = [{"command": n, "median_s": t, "ratio_vs_llmfit": (t / base if t and base else None)} for n, t in results.items()]
    if args.format == "json":
        print(json.dumps({"machine": machine, "runs": args.runs, "rows": rows}, indent=2))
        return 0
    print(f"machine: {machine}; median of {args.runs} runs after one warm-up")
    for r in rows:
        t = "failed" if r["median_s"] is None else f"{r['median_s'] * 1000:7.1f} ms"
        ratio = f"  ({r['ratio_vs_llmfit']:.2f}x llmfit)" if r["ratio_vs_llmfit"] else ""
        print(f"  {r['command']:<45} {t}{ratio}")
    if not llmfit:
        print("  llmfit not installed (pip install llmfit) -> no side-by-side ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
