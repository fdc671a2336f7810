"""The seed article's claims, audited: each figure beside the exact one, with a verdict.

Claims are data (seed_claims.json, with their source). For figures that do not reproduce, a small
search over named hypotheses (what the article may have assumed) reports the nearest one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from importlib import resources

from lowbit.formats.kv import KV_FORMATS
from lowbit.planning.planner import Plan, plan
from lowbit.planning.scenario import BONSAI, ONEBIT_TURBO, TODAY
from lowbit.planning.search import largest
from lowbit.report.render import NBSP, Table, fmt_bytes

CONTEXT = 262_144
TOLERANCE = 0.01  # a figure "reproduces" within 1%
SCENARIOS = {"today": TODAY, "1bit-turbo": ONEBIT_TURBO, "bonsai": BONSAI}
GIB = 1 << 30
CONTEXTS = [32_768, 65_536, 100_000, 128_000, 131_072, 200_000, 256_000, 262_144, 524_288, 1_000_000, 1_048_576]


@lru_cache(maxsize=128)  # claims and hypotheses ask for the same plans again
def _plan(model: str, scenario: str, context: int = CONTEXT, pure: bool = False, vision: bool = False,
          mtp: bool = False) -> Plan:
    s = SCENARIOS[scenario]
    # hypotheses about the article may go past a model's trained maximum: they are readings, not runs
    return plan(model, replace(s, pure=True) if pure else s, context=context, vision=vision, mtp=mtp,
                force_context=True)


def _quantity(p: Plan, quantity: str) -> int:
    parts = {"weights": p.weights_bytes, "kv": p.kv_bytes, "state": p.state_bytes}
    return sum(parts[q] for q in quantity.split("+"))


def _weight_hypotheses(model: str, scenario: str) -> list[tuple[str, int]]:
    s = SCENARIOS[scenario]
    out = [
        ("text GGUF (llama.cpp default)", _plan(model, scenario).weights_bytes),
        ("+ vision tower (mmproj, F16)", _plan(model, scenario, vision=True).weights_bytes),
        ("+ MTP layer + vision tower", _plan(model, scenario, vision=True, mtp=True).weights_bytes),
        (f"--pure {s.mix.name} (no mix overrides)", _plan(model, scenario, pure=True).weights_bytes),
    ]
    return out


def _kv_hypotheses(model: str, scenario: str) -> list[tuple[str, int]]:
    """KV under alternative readings of the architecture, at the usual context lengths."""
    base = _plan(model, scenario, context=1)
    cfg = base.config
    full = cfg.count("full_attention")
    kv_heads = max(cfg.num_kv_heads)
    readings = {
        "real hybrid (1 layer in 4 holds KV)": (full, kv_heads, cfg.head_dim),
        "every layer holds KV (hybrid ignored)": (cfg.num_layers, kv_heads, cfg.head_dim),
        "GQA ignored (query heads as KV heads)": (full, cfg.num_heads, cfg.head_dim),
        "hybrid and GQA ignored": (cfg.num_layers, cfg.num_heads, cfg.head_dim),
    }
    formats = ["f16", "f32"] if scenario == "today" else [f for f, v in KV_FORMATS.items() if v.family == "turbo"]
    out = []
    for reading, (layers, heads, hd) in readings.items():
        for f in formats:
            per_token = 2 * layers * heads * KV_FORMATS[f].vector_bytes(hd)
            for ctx in CONTEXTS:
                out.append((f"{reading}, {f}, {ctx:,} tokens", per_token * ctx))
    return out


def _nearest(target: float, hypotheses: list[tuple[str, int]]) -> dict:
    name, value = min(hypotheses, key=lambda h: abs(h[1] - target))
    return {"assumption": name, "bytes": value, "error": (value - target) / target}


def _largest_context(model: str, scenario: str, quantity: str, limit: float) -> int:
    """Largest context (tokens) at which `quantity` stays under `limit` bytes (0 if none does)."""
    found = largest(lambda c: _quantity(_plan(model, scenario, context=c), quantity) < limit, 1, 1 << 24)
    return found or 0


def _ratio(model: str, quantity: str) -> float:
    return _quantity(_plan(model, "today"), quantity) / _quantity(_plan(model, "1bit-turbo"), quantity)


def reference_files() -> list[dict]:
    """Published GGUF files beside lowbit's prediction: the file (header + tensors) and its tensor data.

    A page states a size rounded to two decimals, so a prediction within half a unit of the last digit
    is as close as the page can say; beyond TOLERANCE the row says it does not hold."""
    data = json.loads(resources.files("lowbit.report").joinpath("reference_files.json").read_text())
    rows = []
    for f in data["files"]:
        p = _plan(f["model"], f["scenario"], context=1)
        published = round(f["value_gib"] * GIB)
        rows.append({
            "id": f["id"], "what": f["what"], "source": f["source"], "published_bytes": published,
            "model": f["model"], "scenario": SCENARIOS[f["scenario"]].label(),
            "file_bytes": p.file_bytes, "tensor_bytes": p.weights_bytes, "header_bytes": p.header_bytes,
            "header": p.provenance()["gguf_header_bytes"].partition(":")[0],
            "error": (published - p.file_bytes) / p.file_bytes,
            "holds": abs(published - p.file_bytes) / p.file_bytes <= TOLERANCE,
            "differs": _what_differs(f["value_gib"], p),
        })
    return rows


def _what_differs(value_gib: float, p: Plan) -> str:
    """Which of lowbit's figures the page's rounded number is, and what the rest is."""
    shown = f"{value_gib:.2f}"
    tensors, whole = f"{p.weights_bytes / GIB:.2f}", f"{p.file_bytes / GIB:.2f}"
    header = f"{p.header_bytes / 1e6:.1f} MB header ({p.provenance()['gguf_header_bytes'].split(' (')[0].rstrip(':')})"
    if shown == whole:
        return f"the page's figure is the whole file; tensor data {p.weights_bytes / GIB:.3f} GiB + {header}"
    if shown == tensors:
        return (f"the page's figure matches the tensor data ({p.weights_bytes / GIB:.3f} GiB); the whole file adds "
                f"a {header}: {p.file_bytes / GIB:.3f} GiB")
    return (f"neither the file ({p.file_bytes / GIB:.3f} GiB) nor its tensor data ({p.weights_bytes / GIB:.3f} GiB) "
            f"rounds to the page's {shown} GiB")


def audit() -> dict:
    data = json.loads(resources.files("lowbit.report").joinpath("seed_claims.json").read_text())
    rows = []
    for c in data["claims"]:
        row = {"id": c["id"], "quote": c["quote"], "quantity": c["quantity"]}
        if c["kind"] == "figure":
            claimed = c["value_gb"] * 1e9
            exact = _quantity(_plan(c["model"], c["scenario"]), c["quantity"])
            row.update(claimed_bytes=int(claimed), exact_bytes=exact, error=(claimed - exact) / exact,
                       holds=abs(claimed - exact) / exact <= TOLERANCE)
            if not row["holds"] and c["quantity"] in ("weights", "kv"):
                hyps = (_weight_hypotheses if c["quantity"] == "weights" else _kv_hypotheses)(c["model"], c["scenario"])
                row["nearest"] = _nearest(claimed, hyps)
        elif c["kind"] == "under":
            exact = _quantity(_plan(c["model"], c["scenario"]), c["quantity"])
            row.update(claimed_bytes=int(c["value_gb"] * 1e9), exact_bytes=exact, holds=exact < c["value_gb"] * 1e9,
                       largest_context=_largest_context(c["model"], c["scenario"], c["quantity"], c["value_gb"] * 1e9))
        elif c["kind"] == "ratio_at_least":
            r = _ratio(c["model"], c["quantity"])
            row.update(claimed_ratio=c["value"], exact_ratio=r, holds=r >= c["value"])
        elif c["kind"] == "ratio_range":
            ratios = {m: _ratio(m, c["quantity"]) for m in c["models"]}
            row.update(claimed_range=[c["low"], c["high"]], exact_ratios=ratios,
                       holds=all(c["low"] <= r <= c["high"] for r in ratios.values()))
        rows.append(row)
    return {"source": data["source"], "context": CONTEXT, "note": data["context_note"],
            "scenarios": {k: f"{s.mix.name}{' --pure' if s.pure else ''} + {s.k.name}" for k, s in SCENARIOS.items()},
            "claims": rows, "reference_files": reference_files()}


AUDIT_COLUMNS = ["claim", "article", "exact", "verdict", "what would reproduce it"]


def audit_rows(result: dict, units: str = "GB") -> list[list[str]]:
    """One row per claim: quote, the article's figure, the exact one, the verdict, the nearest assumption."""
    rows = []
    for r in result["claims"]:
        if "claimed_bytes" in r:
            article, exact = fmt_bytes(r["claimed_bytes"], units), fmt_bytes(r["exact_bytes"], units)
        elif "claimed_ratio" in r:
            article, exact = f">={NBSP}{r['claimed_ratio']}x", f"{r['exact_ratio']:.2f}x"
        else:
            article = f"{r['claimed_range'][0]:g}-{r['claimed_range'][1]:g}x"
            exact = ", ".join(f"{m.split('-', 1)[1]}{NBSP}{v:.2f}x" for m, v in r["exact_ratios"].items())
        note = ""
        if "nearest" in r:
            n = r["nearest"]
            note = f"nearest: {n['assumption']} = {fmt_bytes(n['bytes'], units)} ({n['error']:+.1%})"
        elif "largest_context" in r:
            note = f"holds up to {r['largest_context']:,} tokens" if r["largest_context"] else "not at any context"
        rows.append([f"{r['quote']} [{r['quantity']}]", article, exact, "holds" if r["holds"] else "does not hold", note])
    for f in result.get("reference_files", []):
        rows.append([f"{f['what']}, per {f['source']} [file; lowbit: {f['model']} {f['scenario']}]",
                     fmt_bytes(f["published_bytes"], units), fmt_bytes(f["file_bytes"], units),
                     "holds" if f["holds"] else "does not hold", f"{f['error']:+.2%}; {f['differs']}"])
    return rows


def audit_table(result: dict, units: str = "GB") -> Table:
    t = Table(f"The seed's claims at {result['context']:,} tokens (today = {result['scenarios']['today']}; "
              f"1bit-turbo = {result['scenarios']['1bit-turbo']})", AUDIT_COLUMNS,
              caption=f"Source: {result['source']}\n{result['note']}", right_align_from=1)
    t.left_from = 3  # the verdict and the nearest assumption are text
    t.rows = audit_rows(result, units)
    return t
