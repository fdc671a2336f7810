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
    label = "; ".join(f"KLD vs f16 cache measured on {m.get('model')} ({m.get('command', '')})" for m in models)
    return {"label": f"measured: {label}", "models": models}


def quality_cell(quality: dict, kv_k: str, kv_v: str) -> str:
    cells = []
    for m in quality["models"]:
        for r in m.get("rows", []):
            if r.get("kv_k") == kv_k and r.get("kv_v") == kv_v and r.get("kld") is not None:
                cells.append(f"{r['kld']:.3f}")
                break
        else:
            cells.append("-")
    return "/".join(cells)
