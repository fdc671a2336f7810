"""The HTML report: one self-contained page (plots inlined as PNG) a person would rather look at.

Sections: the family under both scenarios (exact bars), KV bytes against context per format, the seed's
claims audited, and whatever lowbit has measured (KV and weight quality, kernel speed) read from the
JSON files the eval and benchmark commands write. Every figure carries its provenance.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from importlib import resources
from pathlib import Path

from lowbit.models.catalog import resolve
from lowbit.planning.planner import plan
from lowbit.planning.simulate import simulate
from lowbit.report.audit import AUDIT_COLUMNS, audit, audit_rows
from lowbit.report.render import UNITS, fmt_bytes

PARTS = [("weights_bytes", "weights", "#3b6ea8"), ("kv_bytes", "KV cache", "#e08a2c"),
         ("state_bytes", "recurrent state", "#5b9a53"), ("runtime_bytes", "runtime (estimated)", "#b9b9b9")]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _family_plot(sim, units: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sim.models()
    n_s = len(sim.scenarios)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / n_s
    div = UNITS[units]
    for j, s in enumerate(sim.scenarios):
        bottom = [0.0] * len(models)
        xs = [i + (j - (n_s - 1) / 2) * width for i in range(len(models))]
        for key, label, color in PARTS:
            vals = [getattr(sim.get(m, s.name), key) / div for m in models]
            ax.bar(xs, vals, width * 0.95, bottom=bottom, color=color, label=label if j == 0 else None,
                   alpha=1.0 if j == 0 else 0.6, edgecolor="white", linewidth=0.5)
            bottom = [b + v for b, v in zip(bottom, vals)]
        for x, b in zip(xs, bottom):
            ax.text(x, b, f"{b:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(models)), [m.replace("qwen3.5-", "") for m in models])
    ax.set_yscale("log")
    ax.set_ylabel(f"{units} (log scale)")
    ax.set_title(" vs ".join(s.label() for s in sim.scenarios)
                 + f": solid = {sim.scenarios[0].name}, faded = {sim.scenarios[-1].name}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _kv_plot(model: str, formats: list[str], units: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    contexts = [2**k for k in range(12, 21)]
    div = UNITS[units]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for f in formats:
        ax.plot(contexts, [plan(model, "Q4_K_M", kv=f, context=c).kv_bytes / div for c in contexts], marker="o",
                ms=3, label=f)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens, 1 sequence)")
    ax.set_ylabel(f"KV cache ({units})")
    ax.set_title(f"{model}: KV cache by format (exact)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


KV_MODEL = "qwen3.5-122b-a10b"


def _kv_note(model: str) -> str:

    cfg = resolve(model).config
    return (f"exact: only the {cfg.count('full_attention')} full-attention layers of {cfg.num_layers} hold KV; "
            f"{max(cfg.num_kv_heads)} KV heads of {cfg.head_dim} values each; context padded to 256 (llama.cpp).")


def _table(columns: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


MEASURED = [  # file, title, the columns a reader needs (the JSON keeps the rest)
    ("kv_quality.json", "KV-cache quality, measured",
     ["model", "kv_k", "kv_v", "boundary", "bits_per_value", "ppl", "ppl_f16", "kld", "top1", "niah"]),
    ("weights_quality.json", "Weight-format quality, measured",
     ["model", "weights", "method", "kv", "bits_per_weight", "body_bits_per_weight", "ppl", "ppl_reference", "kld",
      "top1"]),
    ("kernels.json", "GPU decode attention over the packed cache, measured",
     ["shape", "context", "batch", "kv", "backend", "ms", "baseline", "baseline_ms", "speedup", "triton_speedup"]),
]


def _measured_sections() -> str:
    out = []
    for name, title, cols in MEASURED:
        path = resources.files("lowbit.report").joinpath(name)
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        blocks = data if isinstance(data, list) else [data]
        rows = [r for b in blocks for r in b.get("rows", [])]
        if not rows:
            continue
        cols = [c for c in cols if any(c in r for r in rows)]
        meta = "; ".join(f"{k}: {b[k]}" for b in blocks for k in ("model", "device", "date", "command") if k in b)
        meta = meta or " ".join(b.get("description", "") for b in blocks)
        out.append(f"<h2>{html.escape(title)}</h2><p class=prov>measured — {html.escape(meta)}"
                   f" (all columns in src/lowbit/report/{name})</p>"
                   + (_quality_plot(rows) if name == "kv_quality.json" else "")
                   + (_kernels_plot(rows, blocks[0].get("device", "")) if name == "kernels.json" else "")
                   + _table(cols, [[_short(r.get(c)) for c in cols] for r in rows]))
    return "".join(out)


def _quality_plot(rows: list[dict]) -> str:
    """KL divergence against bits per value, one marker per format and model: the trade-off at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for model, marker in zip(sorted({r["model"] for r in rows}), "os^"):
        pts = [r for r in rows if r["model"] == model and not r.get("boundary") and r.get("kld") is not None]
        ax.scatter([r["bits_per_value"] for r in pts], [max(r["kld"], 1e-4) for r in pts], marker=marker, label=model)
        for r in pts:
            name = r["kv_k"] if r["kv_k"] == r["kv_v"] else f"{r['kv_k']}/{r['kv_v']}"
            ax.annotate(name, (r["bits_per_value"], max(r["kld"], 1e-4)), fontsize=6, alpha=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("bits per value (K and V averaged, exact)")
    ax.set_ylabel("KL divergence vs f16 cache (measured)")
    ax.set_title("KV-cache formats: bytes against quality")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def _kernels_plot(rows: list[dict], device: str) -> str:
    """Speedup over bf16 attention per layer shape and context, one bar per batch size, the kernel goals drawn (2x at batch 1, 2.5x at batch 8 and 32)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["shape"], r["context"]) for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    width = 0.8 / len(batches)
    for i, b in enumerate(batches):
        vals = [next((r["speedup"] for r in rows if (r["shape"], r["context"]) == g and r["batch"] == b), 0)
                for g in groups]
        ax.bar([k + i * width for k in range(len(groups))], vals, width, label=f"batch {b}")
    for goal, style in ((2.5, "--"), (1.6, ":")):
        ax.axhline(goal, color="gray", linestyle=style, linewidth=1)
        ax.annotate(f"goal {goal}x", (len(groups) - 0.5, goal), fontsize=7, color="gray", va="bottom", ha="right")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))],
                  [f"{s}\n{c // 1024}K" for s, c in groups], fontsize=7)
    ax.set_ylabel("speedup over bf16 SDPA (measured)")
    ax.set_title(f"turbo3 decode attention, packed cache vs bf16 ({device})")
    ax.legend(fontsize=8)
    return _png(fig)


def _short(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)[:80]
    return "" if v is None else v


CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0;
font-size:12.5px}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}
th{background:#f3f5f8}tr:nth-child(even){background:#fafafa}.prov{color:#666;font-size:12px}.bad{color:#b02a2a}
.good{color:#2a7a2a}img{max-width:100%}"""


def build(out: Path, units: str = "GB", context: int = 262_144) -> Path:

    sim = simulate(context=context)
    fam_rows = []
    for m in sim.models():
        row = [m]
        for s in sim.scenarios:
            p = sim.get(m, s.name)
            row += [fmt_bytes(p.weights_bytes, units), fmt_bytes(p.kv_bytes, units), fmt_bytes(p.state_bytes, units),
                    fmt_bytes(p.runtime_bytes, units), fmt_bytes(p.total_bytes, units)]
        row.append(f"{sim.ratio(m):.2f}x")
        fam_rows.append(row)
    fam_cols = ["model"] + [f"{s.name} {c}" for s in sim.scenarios for c in ("weights", "KV", "state", "runtime", "total")]
    fam_cols.append("ratio")
    result = audit()
    kv_formats = ["f16", "q8_0", "q4_0", "turbo4", "turbo3.5", "turbo3", "turbo2.5", "turbo2"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lowbit report</title><style>{CSS}</style></head><body>
<h1>lowbit: what 1-bit weights and TurboQuant KV caches really cost</h1>
<p class=prov>Generated {dt.date.today().isoformat()} by <code>lowbit report</code>. Units: {units}.
<b>exact</b> = format definition x shapes (llama.cpp layout); <b>estimated</b> = runtime buffers (assumption named in
<code>lowbit plan</code>); <b>measured</b> = from a run, with its command.</p>
<h2>The Qwen3.5 family at {context:,} tokens</h2>
{_family_plot(sim, units)}
{_table(fam_cols, fam_rows)}
<p class=prov>weights, KV, state: exact. runtime: {html.escape(sim.plans[0].provenance()['runtime_bytes'])}.</p>
<h2>KV cache against context</h2>
{_kv_plot(KV_MODEL, kv_formats, units)}
<p class=prov>{html.escape(_kv_note(KV_MODEL))}</p>
<h2>The seed article's claims, audited</h2>
<p class=prov>{html.escape(result['source'])}. {html.escape(result['note'])}</p>
{_table(AUDIT_COLUMNS, audit_rows(result, units))}
{_measured_sections()}
</body></html>"""
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(out)  # never leave a half-written report behind
    return out
