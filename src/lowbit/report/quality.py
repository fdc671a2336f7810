"""Measured KV-cache quality, read from what `lowbit eval kv` wrote (kv_quality.json), to label formats.

The figures were measured on small real models (SmolLM2-135M, Gemma 3 270M), not on the models a
simulation plans, so every figure shown is named with the model it was measured on.
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
    names = " / ".join(str(m.get("model")) for m in models)
    label = (f"KV quality, measured: KL divergence against the f16 cache on {names} (each value named with the "
             "model it was measured on, not on the models planned here; pydoc text; commands and full tables in "
             "docs/turboquant.md)")
    return {"label": label, "models": models}


def kld(model: dict, kv_k: str, kv_v: str) -> float | None:
    """The measured KL divergence of one model with every layer's cache in K/V formats (None: not measured)."""
    for r in model.get("rows", []):
        # the plain setting: every layer in this format (rows with f16 boundary layers are variants)
        if r.get("kv_k") == kv_k and r.get("kv_v") == kv_v and not r.get("boundary") and r.get("kld") is not None:
            return max(0.0, r["kld"])  # the harness measures f16 vs itself as ~-1e-7
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def quality_cell(quality: dict, kv_k: str, kv_v: str) -> str:
    """`smollm2-135m 0.294, gemma3-270m 0.531`: each figure with the model it was measured on."""
    return ", ".join(f"{m.get('model')}{NBSP}{_fmt(kld(m, kv_k, kv_v))}" for m in quality["models"])


def quality_table(quality: dict, scenarios: list) -> Table:
    """One row per scenario's cache format, one column per model it was measured on."""
    names = [str(m.get("model")) for m in quality["models"]]
    t = Table("KV-cache quality of each scenario's cache format, measured on small real models",
              ["scenario", "KV K/V"] + [f"KL on\n{n}" for n in names], right_align_from=2,
              caption=quality["label"] + ". '-': not measured.")
    for s in scenarios:
        t.add(s.name, s.kv_label(), *(_fmt(kld(m, s.k.name, s.v.name)) for m in quality["models"]))
    return t
