"""Measured KV-cache quality, read from what benchmarks/kv_frontier.py or `lowbit eval kv` wrote
(kv_quality.json), to label formats.

The figures were measured on small real models (SmolLM2-135M, Gemma 3 270M), not on the models a
simulation plans, so every figure shown is named with the model it was measured on. Files written since
intervals were kept carry a 95% interval per figure (`kld_ci`); older ones give the point value alone, and
both are read.
"""

from __future__ import annotations

import json
from importlib import resources

from lowbit.report.render import NBSP, Table


def kv_quality() -> dict | None:
    path = resources.files("lowbit.report").joinpath("kv_quality.json")
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    models = data if isinstance(data, list) else [data]
    # the per-window sums serve the frontier's paired comparisons; a label needs the figures and intervals
    models = [{**m, "rows": [{k: v for k, v in r.items() if k != "windows"} for r in m.get("rows", [])]}
              for m in models]
    names = " / ".join(str(m.get("model")) for m in models)
    sizes = sorted({m.get("setup", {}).get("tokens") for m in models if isinstance(m.get("setup", {}).get("tokens"), int)})
    tokens = f"{'/'.join(f'{t:,}' for t in sizes)} tokens of " if sizes else ""
    intervals = any("kld_ci" in r for m in models for r in m.get("rows", []))
    label = (f"KV quality, measured: KL divergence against the f16 cache on {names} (each value named with the "
             f"model it was measured on, not on the models planned here; {tokens}pydoc text"
             + ("; [a, b]: 95% interval, bootstrap over windows" if intervals else "")
             + "; commands and full tables in docs/turboquant.md)")
    return {"label": label, "models": models}


def _row(model: dict, kv_k: str, kv_v: str) -> dict | None:
    for r in model.get("rows", []):
        # the plain setting: every layer in this format (rows with f16 boundary layers are variants)
        if r.get("kv_k") == kv_k and r.get("kv_v") == kv_v and not r.get("boundary") and r.get("kld") is not None:
            return r
    return None


def kld(model: dict, kv_k: str, kv_v: str) -> float | None:
    """The measured KL divergence of one model with every layer's cache in K/V formats (None: not measured)."""
    r = _row(model, kv_k, kv_v)
    return None if r is None else max(0.0, r["kld"])  # the harness measures f16 vs itself as ~-1e-7


def kld_interval(model: dict, kv_k: str, kv_v: str) -> tuple[float, float] | None:
    """The 95% interval of that KL divergence, where the file has one."""
    r = _row(model, kv_k, kv_v)
    ci = None if r is None else r.get("kld_ci")
    return None if not ci else (max(0.0, ci[0]), max(0.0, ci[1]))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def ci_text(value: float, ci: list[float] | tuple[float, float] | None, digits: int = 3,
            same: float | None = None) -> str:
    """`1.066 [1.058, 1.074]`; `~1.001 [0.998, 1.004]` when the interval holds `same` (no difference from the
    baseline told apart); the value alone without an interval."""
    if not ci:
        return f"{value:.{digits}f}"
    lo, hi = ci
    mark = "~" if same is not None and lo <= same <= hi else ""
    return f"{mark}{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def niah_text(row: dict) -> str:
    """`7/10 [0.40, 0.89]` (found of trials, 95% Wilson interval), or the fraction where trials are missing."""
    trials = row.get("niah_trials") or []
    if not trials:
        return f"{row['niah']:.2f}"
    found = sum(bool(t["found"]) for t in trials)
    ci = row.get("niah_ci")
    return f"{found}/{len(trials)}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def quality_cell(quality: dict, kv_k: str, kv_v: str) -> str:
    """`smollm2-135m 0.294, gemma3-270m 0.531`: each figure with the model it was measured on."""
    return ", ".join(f"{m.get('model')}{NBSP}{_fmt(kld(m, kv_k, kv_v))}" for m in quality["models"])


def _fmt_ci(model: dict, kv_k: str, kv_v: str) -> str:
    v, ci = kld(model, kv_k, kv_v), kld_interval(model, kv_k, kv_v)
    return _fmt(v) if v is None or ci is None else ci_text(v, ci)


def quality_table(quality: dict, scenarios: list) -> Table:
    """One row per scenario's cache format, one column per model it was measured on."""
    names = [str(m.get("model")) for m in quality["models"]]
    t = Table("KV-cache quality of each scenario's cache format, measured on small real models",
              ["scenario", "KV K/V"] + [f"KL on\n{n}" for n in names], right_align_from=2,
              caption=quality["label"] + ". '-': not measured.")
    for s in scenarios:
        t.add(s.name, s.kv_label(), *(_fmt_ci(m, s.k.name, s.v.name) for m in quality["models"]))
    return t
