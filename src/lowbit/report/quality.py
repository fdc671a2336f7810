"""Measured KV-cache quality, read from what `lowbit eval kv` wrote (kv_quality.json), to label formats."""

from __future__ import annotations

import json
from importlib import resources


def kv_quality() -> dict | None:
    path = resources.files("lowbit.report").joinpath("kv_quality.json")
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    models = data if isinstance(data, list) else [data]
    names = " / ".join(str(m.get("model")) for m in models)
    label = (f"KV quality, measured: KL divergence against the f16 cache on {names} (one value per model, in that "
             "order; pydoc text; commands and full tables in docs/turboquant.md)")
    return {"label": label, "models": models}


def quality_cell(quality: dict, kv_k: str, kv_v: str) -> str:
    cells = []
    for m in quality["models"]:
        for r in m.get("rows", []):
            # the plain setting: every layer in this format (rows with f16 boundary layers are variants)
            if r.get("kv_k") == kv_k and r.get("kv_v") == kv_v and not r.get("boundary") and r.get("kld") is not None:
                cells.append(f"{max(0.0, r['kld']):.3f}")  # the harness measures f16 vs itself as ~-1e-7
                break
        else:
            cells.append("-")
    return "/".join(cells)
