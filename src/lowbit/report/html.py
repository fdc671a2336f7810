"""The HTML report: one self-contained page (plots inlined as PNG) a person would rather look at.

Sections: a summary (the seed's headline claims against the exact and measured figures), the family under
both scenarios, KV bytes against context per format, the claims audited one by one, and whatever lowbit
has measured (KV and weight quality, kernel speed) read from the JSON files the eval and benchmark commands
write. Every figure carries its provenance.

Each plot is drawn twice, for a wide screen and for a phone (a <picture> picks one by the viewport's width),
both at twice the CSS size so that text stays sharp and is shown at the size it was drawn.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from lowbit.models.catalog import resolve
from lowbit.planning.planner import plan
from lowbit.planning.simulate import Simulation, simulate
from lowbit.report.audit import audit
from lowbit.report.frontier import analyse, frontier_figure, frontier_table, has_intervals
from lowbit.progress import progress_bar
from lowbit.report.render import UNITS, fmt_bytes
from lowbit.report.speed_table import simulate_speed_table
from lowbit.safe_write import check_target, write_text

PARTS = [("weights_bytes", "weights", "#3b6ea8"), ("kv_bytes", "KV cache", "#e08a2c"),
         ("state_bytes", "recurrent state", "#5b9a53"), ("runtime_bytes", "runtime (estimated)", "#b9b9b9")]
MODEL_COLORS = ["#3b6ea8", "#e08a2c", "#5b9a53", "#a04ca0"]
MODEL_MARKERS = "os^D"

# Figure widths in inches; 100 CSS px per inch, drawn at 2x. Phone: fits a 420-px screen less the page padding.
WIDE_IN, NARROW_IN, DPI = 10.0, 3.8, 200
NARROW_MEDIA = "(max-width: 720px)"
FONT = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
        "legend.fontsize": 9, "figure.titlesize": 11}

KV_MODEL = "qwen3.5-122b-a10b"
KV_FORMATS = ["f16", "q8_0", "q4_0", "turbo4", "turbo3.5", "turbo3", "turbo2.5", "turbo2"]
# A KL divergence is never negative; the harness measures a model against itself as about -1e-5 (float rounding).
KL_ROUNDING = 1e-3


# ---------------------------------------------------------------------------------------------------- numbers


def fmt_sig(v: float, digits: int = 4) -> str:
    """`digits` significant digits, never an exponent: 0.0003855 -> 0.0003855, 12.60617 -> 12.61."""
    import numpy as np

    return np.format_float_positional(v, precision=digits, unique=False, fractional=False, trim="-")


def fmt_large(v: float) -> str:
    """A count or perplexity for people: 11.94, 744.8, 12,345, 7.36 million, 956 billion."""
    if not abs(v) < 1e6:
        for word, scale in (("trillion", 1e12), ("billion", 1e9), ("million", 1e6)):
            if abs(v) >= scale:
                return f"{fmt_sig(v / scale, 3)} {word}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return fmt_sig(v, 4)


def fmt_kl(v: float) -> tuple[str, bool]:
    """KL divergence with 4 decimals; a tiny negative (float rounding of a zero) shows as 0.0000, flagged True."""
    if -KL_ROUNDING < v < 0:
        return "0.0000", True
    return f"{v:.4f}", False


def fmt_pct(v: float) -> str:
    return f"{100 * v:.1f}%" if v == 0 or abs(v) >= 0.01 else f"{100 * v:.2f}%"


def fmt_bits(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".")


def fmt_tokens(n: int) -> str:
    """2**k tokens as 4K ... 1M (binary, as llama.cpp's -c 32K means 32,768)."""
    return f"{n >> 20}M" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10}K" if n % 1024 == 0 else f"{n:,}"


# ---------------------------------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    # a plot has few colours: a 256-colour palette keeps text crisp at a third of the bytes
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# Called after each figure: build() advances its progress bar with it (2-3 s a figure on a laptop).
_FIGURE_DRAWN: ContextVar[Callable[[], None]] = ContextVar("lowbit_report_figure", default=lambda: None)


def _figure(draw: Callable[[bool], object], alt: str) -> str:
    """`draw(narrow)` returns a matplotlib figure; both layouts go into one <picture>, the phone's by media query."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context(FONT):
        wide, narrow = _png(draw(False)), _png(draw(True))
    _FIGURE_DRAWN.get()()
    # density 2x: the browser shows the PNG at half its pixels, i.e. at the size it was drawn in inches
    return (f'<figure><picture><source media="{NARROW_MEDIA}" srcset="{narrow} 2x">'
            f'<img alt="{html.escape(alt)}" srcset="{wide} 2x"></picture></figure>')


def _new_figure(narrow: bool, height_wide: float, height_narrow: float, **kw):
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(NARROW_IN, height_narrow) if narrow else (WIDE_IN, height_wide), layout="constrained",
                      **kw)


def family_figure(sim: Simulation, units: str, narrow: bool):
    """One panel per model, each on its own linear axis: stacked bars are true to scale, small models readable."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    models = sim.models()
    cols = 2 if narrow else 4
    rows = -(-len(models) // cols)
    fig = _new_figure(narrow, 3.0 * rows + 0.9, 2.45 * rows + 1.2)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    div = UNITS[units]
    for ax, m in zip(axes, models):
        totals = []
        for j, s in enumerate(sim.scenarios):
            p, bottom = sim.get(m, s.name), 0.0
            for key, _, color in PARTS:
                v = getattr(p, key) / div
                ax.bar(j, v, 0.62, bottom=bottom, color=color, edgecolor="white", linewidth=0.4)
                bottom += v
            totals.append(bottom)
            ax.text(j, bottom, f"{bottom:.1f}", ha="center", va="bottom", fontsize=9)
        ax.set_ylim(0, max(totals) * 1.22)
        ax.set_xlim(-0.6, len(sim.scenarios) - 0.4)
        ax.set_xticks(range(len(sim.scenarios)), [s.name for s in sim.scenarios])
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} {units}"))
        ax.set_title(f"{m.replace('qwen3.5-', '')}" + ("\n" if narrow else ": ") + f"{sim.ratio(m):.2f}x less",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.legend(handles=[Patch(color=c, label=label) for _, label, c in PARTS], loc="outside upper center",
               ncol=2 if narrow else 4, frameon=False)
    return fig


def kv_figure(model: str, formats: list[str], units: str, narrow: bool):
    """KV bytes against context, log-log: one straight line per format (bytes grow linearly with tokens)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    contexts = [2**k for k in range(12, 21)]
    div = UNITS[units]
    fig = _new_figure(narrow, 4.3, 4.9)
    ax = fig.subplots()
    for f in formats:
        # the plot runs past the native maximum on purpose (Qwen3.5 extends to 1M tokens with YaRN)
        kv = [plan(model, "Q4_K_M", kv=f, context=c, force_context=True).kv_bytes / div for c in contexts]
        ax.plot(contexts, kv, marker="o", ms=3, label=f)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    shown = contexts[::2] if narrow else contexts
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_tokens(int(round(v)))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("context (tokens, 1 sequence)")
    ax.set_ylabel(f"KV cache ({units}, log scale)")
    ax.grid(alpha=0.3, which="both")
    if narrow:
        fig.legend(loc="outside upper center", ncol=3, frameon=False, title="KV format (K and V)")
    else:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="KV format\n(K and V)")
    return fig


@dataclass
class QualityPoint:
    label: str
    bits: dict  # model -> bits per value
    kld: dict  # model -> KL divergence


def quality_points(rows: list[dict]) -> list[QualityPoint]:
    """Plain settings (no f16 boundary layers), f16 left out (the reference), most bits first."""
    pts: dict[tuple[str, str], QualityPoint] = {}
    for r in rows:
        if r.get("boundary") or r.get("kld") is None or r["kv_k"] == r["kv_v"] == "f16":
            continue
        key = (r["kv_k"], r["kv_v"])
        name = r["kv_k"] if r["kv_k"] == r["kv_v"] else f"{r['kv_k']} / {r['kv_v']}"
        pt = pts.setdefault(key, QualityPoint(name, {}, {}))
        pt.bits[r["model"]] = r["bits_per_value"]
        pt.kld[r["model"]] = max(r["kld"], 0.0)
    return sorted(pts.values(), key=lambda p: -sum(p.bits.values()) / len(p.bits))


def _bits_range(bits: dict) -> str:
    """2 decimals at most (the table has the exact figures)."""
    lo, hi = (f"{v:.2f}".rstrip("0").rstrip(".") for v in (min(bits.values()), max(bits.values())))
    return lo if lo == hi else f"{lo}-{hi}"


def quality_figure(rows: list[dict], narrow: bool):
    """A dot plot: one line per KV format (labelled with its bits per value), one marker per model: no label
    can overlap another, and the log axis holds dots, not bars."""
    from matplotlib.ticker import LogLocator

    pts = quality_points(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = _new_figure(narrow, 0.25 * len(pts) + 1.3, 0.42 * len(pts) + 1.6)
    ax = fig.subplots()
    ys = list(range(len(pts)))[::-1]
    floor = 1e-4  # below any non-zero measurement; a zero KL is drawn at the axis' edge
    for m, color, marker in zip(models, MODEL_COLORS, MODEL_MARKERS):
        xy = [(max(p.kld[m], floor), y) for p, y in zip(pts, ys) if m in p.kld]
        ax.scatter([x for x, _ in xy], [y for _, y in xy], color=color, marker=marker, s=30, label=m, zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(numticks=6))
    sep = "\n" if narrow else " "
    ax.set_yticks(ys, [f"{p.label}{sep}({_bits_range(p.bits)} bits)" for p in pts])
    ax.set_ylim(-0.7, len(pts) - 0.3)
    ax.set_xlabel("KL divergence vs the f16 cache" + ("\n" if narrow else " ") + "(nats per token, log scale)")
    if not narrow:  # the tick labels say it; on a phone the width is the plot's
        ax.set_ylabel("KV format (bits per value)")
    ax.grid(axis="x", alpha=0.3, which="major")
    ax.grid(axis="y", alpha=0.15)
    fig.legend(loc="outside upper center", ncol=len(models), frameon=False)
    return fig


def kernels_figure(rows: list[dict], narrow: bool):
    """Speedup over bf16 attention per layer shape, context and K/V format, one bar per batch size (linear axis)."""
    groups = list(dict.fromkeys((r["shape"], r["context"], r["kv"]) for r in rows))
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / len(batches)
    tall = 0.55 * len(groups) + 1.6
    # more than six groups: horizontal bars on a wide page too, or their labels run into each other
    horizontal = narrow or len(groups) > 6
    fig = _new_figure(narrow, tall if horizontal else 3.8, tall)
    ax = fig.subplots()
    labels = [f"{s}, {fmt_tokens(c)}\n{kv}" for s, c, kv in groups]
    for i, (b, color) in enumerate(zip(batches, MODEL_COLORS)):
        vals = [next((r["speedup"] for r in rows if (r["shape"], r["context"], r["kv"]) == g and r["batch"] == b), 0)
                for g in groups]
        pos = [k + (i - (len(batches) - 1) / 2) * width for k in range(len(groups))]
        (ax.barh if horizontal else ax.bar)(pos, vals, width, color=color, label=f"batch {b}")
    label = "speedup over bf16 SDPA" + ("\n" if horizontal else " ") + "(x, measured)"
    if horizontal:
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(groups)), labels)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(groups)), labels)
        ax.set_ylabel(label)
        ax.set_xlabel("layer shape, context and K/V format")
        ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside upper center", ncol=len(batches), frameon=False)
    return fig


STEP_PARTS = (  # (label, colour, the profile groups of benchmarks/decode_e2e.py it sums)
    ("weights (matmuls)", "#9a9a9a", ("matmul (weights)",)),
    ("attention", "#3b6ea8", ("SDPA (bf16 baseline)", "decode attention (lowbit CUDA split kernel)",
                              "decode attention (lowbit Triton stage 1)")),
    ("merge + query rotation", "#e08a2c", ("split merge (lowbit stage 2)", "query rotation (lowbit)")),
    ("K/V store", "#a04ca0", ("K/V store (lowbit q8_0)", "K/V store (lowbit turbo)")),
    ("Gated DeltaNet", "#5b9a53", ("Gated DeltaNet (fla)",)),
    ("everything else", "#d9d9d9", ("other",)),
)


def step_figure(rows: list[dict], narrow: bool):
    """Where a decode step's device time goes, per run with a profile: stacked bars of its kernel groups (ms)."""
    rows = [r for r in rows if r.get("profile_us")]
    fig = _new_figure(narrow, 0.3 * len(rows) + 1.6, 0.38 * len(rows) + 1.9)
    ax = fig.subplots()
    models = len({r["model"] for r in rows}) > 1  # a phone's labels name the model only where several are drawn
    labels = [f"{r['model']}, {fmt_tokens(r['context'])}, batch {r['batch']}, {r['kv']}" if not narrow else
              f"{r['model'] + ' ' if models else ''}{fmt_tokens(r['context'])} x{r['batch']} {r['kv']}" for r in rows]
    left = [0.0] * len(rows)
    for label, color, groups in STEP_PARTS:
        ms = [sum(r["profile_us"].get(g, 0.0) for g in groups) / 1e3 for r in rows]
        if any(ms):
            ax.barh(range(len(rows)), ms, 0.7, left=left, color=color, label=label)
            left = [a + b for a, b in zip(left, ms)]
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("device time per decode step" + ("\n" if narrow else " ") + "(ms, measured)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside upper center", ncol=2 if narrow else 3, frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------------- tables


@dataclass
class Cell:
    text: str
    number: bool = True  # right-aligned, never wrapped
    cls: str = ""


def _cell(c: Cell | str) -> str:
    c = c if isinstance(c, Cell) else Cell(str(c), number=False)
    classes = " ".join(x for x in ("num" if c.number else "txt", c.cls) if x)
    return f'<td class="{classes}">{html.escape(c.text)}</td>'


def table(columns: list[str], rows: list[list[Cell | str]], groups: list[tuple[str, int]] | None = None) -> str:
    """A table in a horizontally scrollable box (a phone scrolls the table, never the page)."""
    head = ""
    if groups:
        head += "<tr>" + "".join(f'<th colspan="{n}">{html.escape(g)}</th>' for g, n in groups) + "</tr>"
    head += "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead>{head}</thead><tbody>{body}</tbody></table></div>'


def _real_size_checks(blocks: list[dict] | None) -> list[tuple[dict, int, int]]:
    """(measured row, K/V held − planned, state held − planned) per GPU run; the plan: --engine transformers."""
    out = []
    for r in _rows(blocks):
        k, _, v = r["kv"].partition("/")
        p = plan(r["model"], weights="BF16", kv_k=k, kv_v=v or k, context=r["tokens"], engine="transformers")
        out.append((r, r["kv_held"] - p.kv_bytes, r["state_held"] - p.state_bytes))
    return out


def _real_size_section(blocks: list[dict], checks: list[tuple[dict, int, int]]) -> str:
    """The plan beside what a GPU's cache really held (`checks` of those blocks): K/V and state, byte for byte."""
    runs = [f"<li>{html.escape(b['date'])}, {html.escape(b['device'])}, lowbit {html.escape(b['commit'])}: "
            f"<code>{html.escape(public_command(b['command']))}</code></li>" for b in blocks]
    rows = [[r["model"], Cell(f"{r['context']:,}"), r["kv"], Cell(f"{r['kv_held'] - dk:,}"), Cell(f"{r['kv_held']:,}"),
             Cell(f"{r['state_held'] - ds:,}"), Cell(f"{r['state_held']:,}"),
             Cell("0 / 0" if (dk, ds) == (0, 0) else f"{dk:+,} / {ds:+,}")]
            for r, dk, ds in checks]
    columns = ["model", "prompt (tokens)", "KV format (K/V)", "K/V planned (bytes, exact)",
               "K/V held (bytes, measured)", "state planned (bytes, exact)", "state held (bytes, measured)",
               "held − planned (K/V / state)"]
    return f"""<h2 id="real-size">Exact, and checked on a GPU</h2>
<p>The plan beside what the cache really held after the prompt, on one H200: Qwen3.5 models at full size (random
weights: only shapes matter), transformers with its own cache (bf16) or lowbit's packed one, K/V and the Gated
DeltaNet state counted tensor by tensor. The plan is <code>lowbit plan MODEL --weights BF16 --kv K/V --context N
--engine transformers</code>; llama.cpp's plan gives the same K/V at these contexts (whole 256-cell blocks) and
a state 1-2 MB larger (it keeps the conv window in f32). Method and the allocator's own figures:
docs/real-size.md.</p>
<ul class=prov>{''.join(runs)}</ul>
{table(columns, rows)}"""


def _family_table(sim: Simulation, units: str) -> str:
    parts = [("weights", "weights_bytes"), ("KV cache", "kv_bytes"), ("state", "state_bytes"),
             ("runtime, est.", "runtime_bytes"), ("total", "total_bytes")]
    rows = []
    for m in sim.models():
        row: list[Cell | str] = [m]
        for s in sim.scenarios:
            p = sim.get(m, s.name)
            row += [Cell(fmt_bytes(getattr(p, key), units)) for _, key in parts]
        row.append(Cell(f"{sim.ratio(m):.2f}x"))
        rows.append(row)
    columns = ["model"] + [f"{name} ({units})" for _ in sim.scenarios for name, _ in parts] + ["today / 1-bit"]
    groups = [("", 1)] + [(f"{s.name}: {s.mix.name} weights, {s.kv_label()} KV", len(parts)) for s in sim.scenarios]
    return table(columns, rows, groups + [("saving", 1)])


QUANTITY = {"weights": "weights", "kv": "KV cache", "weights+kv": "weights + KV cache",
            "weights+kv+state": "weights + KV cache + state"}


SPEED_DEVICES = ["rtx-4090", "h100-80gb", "m4-max-128gb", "cpu-64gb"]


def _speed_section(sim: Simulation) -> str:
    """Decode tokens/s of each model and scenario on a few devices: the speed model's estimate and its bounds."""
    t = simulate_speed_table(sim, sim.speeds(SPEED_DEVICES), SPEED_DEVICES)
    columns = [c.replace("\n", " ") for c in t.columns]
    rows = [[r[0]] + [Cell(c.replace("\n", " ")) for c in r[1:]] for r in t.rows]
    caption = "<br>".join(html.escape(line) for line in t.caption.split("\n"))
    return f"""<h2 id="speed">How fast: decode tokens/s, estimated</h2>
<p>One sequence at {sim.context:,} tokens: the bytes each new token reads (active weights, KV cache, state) over
each device's effective bandwidth, checked against its compute; efficiencies measured on real runs (docs/speed.md,
where the estimate is checked against llama-bench on a CPU and real-size runs on an H200).</p>
{table(columns, rows)}
<p class=prov>estimated. {caption}<br>The same table in a terminal:
<code>lowbit simulate --context {sim.context} --speed {','.join(SPEED_DEVICES)}</code>.</p>
"""


def _audit_table(result: dict, units: str) -> str:
    """The audit's own comparison (lowbit.report.audit), formatted with units and a verdict per claim."""
    rows = []
    for r in result["claims"]:
        what = QUANTITY.get(r["quantity"], r["quantity"])
        if "claimed_bytes" in r:
            under = "largest_context" in r
            article = ("under " if under else "") + f"{fmt_bytes(r['claimed_bytes'], units)} {units}"
            exact = f"{fmt_bytes(r['exact_bytes'], units)} {units}"
            diff = "" if "error" not in r else (f"{r['claimed_bytes'] / r['exact_bytes']:.1f}x the exact"
                                                if abs(r["error"]) >= 1 else f"{r['error']:+.1%}")
        elif "claimed_ratio" in r:
            article, exact = f"over {r['claimed_ratio']:g}x", f"{r['exact_ratio']:.2f}x"
            diff = f"{r['claimed_ratio'] / r['exact_ratio']:.2f}x the exact"
        else:
            lo, hi = r["claimed_range"]
            ratios = r["exact_ratios"].values()
            article, exact = f"{lo:g}-{hi:g}x", f"{min(ratios):.2f}-{max(ratios):.2f}x"
            diff = f"{sum(lo <= v <= hi for v in ratios)} of {len(ratios)} models in range"
        note = ""
        if "nearest" in r:
            n = r["nearest"]
            note = f"{n['assumption']}: {fmt_bytes(n['bytes'], units)} {units} ({n['error']:+.1%})"
        elif "largest_context" in r:
            note = (f"under {fmt_bytes(r['claimed_bytes'], units)} {units} up to {r['largest_context']:,} tokens"
                    if r["largest_context"] else "at no context")
        elif "exact_ratios" in r:
            note = ", ".join(f"{m.replace('qwen3.5-', '')} {v:.2f}x" for m, v in r["exact_ratios"].items())
        verdict = Cell("holds" if r["holds"] else "does not hold", False, "good" if r["holds"] else "bad")
        rows.append([Cell(f"“{r['quote']}”", False, "quote"), what, Cell(article), Cell(exact), Cell(diff), verdict,
                     Cell(note, False, "note")])
    cols = ["claim, as quoted", "quantity", "article's figure", "lowbit (exact)", "article vs exact", "verdict",
            "nearest assumption that reproduces it / detail"]
    return table(cols, rows)


@dataclass
class Column:
    key: str
    header: str
    fmt: Callable[[object], str] | None = None
    number: bool = True


def _dash(f: Callable) -> Callable[[object], str]:
    return lambda v: "-" if v is None else f(v)


def _text(v: object) -> str:
    return "-" if v in (None, "") else str(v)


KV_COLUMNS = [
    Column("model", "model", _text, False), Column("kv_k", "K format", _text, False),
    Column("kv_v", "V format", _text, False), Column("boundary", "f16 edge layers", _dash(str)),
    Column("bits_per_value", "bits per value (exact)", _dash(fmt_bits)),
    Column("ppl", "perplexity", _dash(fmt_large)), Column("ppl_f16", "perplexity, f16 cache", _dash(fmt_large)),
    Column("kld", "KL divergence vs f16 (nats) [95% interval]"),
    Column("top1", "same top token as f16", _dash(fmt_pct)),
    Column("niah", "needle found", None),
]
WEIGHT_COLUMNS = [
    Column("model", "model", _text, False), Column("weights", "weights", _text, False),
    Column("method", "method", _text, False), Column("kv", "KV cache", _text, False),
    Column("tokens", "tokens scored", _dash(lambda v: f"{v:,}")),
    Column("bits_per_weight", "bits per weight, whole model (exact)", _dash(fmt_bits)),
    Column("body_bits_per_weight", "bits per weight, blocks (exact)", _dash(fmt_bits)),
    Column("ppl", "perplexity", _dash(fmt_large)), Column("ppl_reference", "perplexity as shipped", _dash(fmt_large)),
    Column("kld", "KL divergence vs shipped (nats)"), Column("top1", "same top token as shipped", _dash(fmt_pct)),
]
KERNEL_COLUMNS = [
    Column("shape", "layer shape", _text, False), Column("context", "context (tokens)", _dash(lambda v: f"{v:,}")),
    Column("batch", "batch (sequences)", _dash(str)), Column("kv", "KV format (K/V)", _text, False),
    Column("backend", "kernel", _text, False), Column("ms", "packed cache (ms)", _dash(lambda v: fmt_sig(v, 3))),
    Column("baseline", "fastest bf16 SDPA", _text, False),
    Column("baseline_ms", "bf16 SDPA (ms)", _dash(lambda v: fmt_sig(v, 3))),
    Column("speedup", "speedup", _dash(lambda v: f"{v:.2f}x")),
    Column("gbps", "packed bytes read (GB/s)", _dash(lambda v: f"{v:,.0f}")),
]

E2E_COLUMNS = [
    Column("model", "model (random weights)", _text, False),
    Column("context", "context (tokens)", _dash(lambda v: f"{v:,}")),
    Column("batch", "batch (sequences)", _dash(str)), Column("kv", "KV format (K/V)", _text, False),
    Column("step_ms", "step (ms)", _dash(lambda v: fmt_sig(v, 3))),
    Column("tok_s", "tokens/s", _dash(lambda v: f"{v:,.0f}")),
    Column("speedup", "speedup over bf16", _dash(lambda v: f"{v:.2f}x")),
    Column("free_attention", "speedup if attention cost nothing", _dash(lambda v: f"{v:.2f}x")),
    Column("peak_gb", "peak GPU memory (GB)", _dash(lambda v: f"{v:.1f}")),
    Column("cache_gb", "KV cache (GB)", _dash(lambda v: f"{v:.2f}")), Column("note", "note", _text, False),
]

CLAMP_NOTE = ("0.0000*: measured as a tiny negative number (float rounding: the model against itself, or a format "
              "that stores the same values); a KL divergence cannot be negative, so it is shown as zero.")


def _measured_cell(col: Column, r: dict, clamped: list[bool]) -> Cell:
    v = r.get(col.key)
    if col.key == "kld" and v is not None:
        text, flag = fmt_kl(v)
        clamped.append(flag)
        ci = r.get("kld_ci")
        interval = f" [{max(ci[0], 0.0):.4f}, {ci[1]:.4f}]" if ci and ci[0] != ci[1] else ""
        return Cell(text + ("*" if flag else "") + interval)
    if col.key == "niah":
        n = len(r.get("niah_trials", [])) or None
        return Cell("-" if v is None else f"{round(v * n)} of {n}" if n else fmt_pct(v))
    return Cell(col.fmt(v) if col.fmt else _text(v), col.number)


def _measured_table(columns: list[Column], rows: list[dict]) -> tuple[str, bool]:
    columns = [c for c in columns if any(c.key in r for r in rows)]
    clamped: list[bool] = []
    cells = [[_measured_cell(c, r, clamped) for c in columns] for r in rows]
    return table([c.header for c in columns], cells), any(clamped)


def public_command(cmd: str) -> str:
    """A recorded command as a reader can run it: without output files outside the repository (the measuring
    machine's temporary folders) and with a known model named, not its copy there (`--model NAME=/path`), each
    command once."""
    parts = []
    for c in cmd.split(" ; "):
        c = re.sub(r"\s+--out\s+/\S+", "", c.strip())
        c = re.sub(r"(--models?\s+[\w.-]+)=/\S+", r"\1", c)
        if c and c not in parts:
            parts.append(c)
    return " ; ".join(parts)


def _read(name: str) -> list[dict] | None:
    path = resources.files("lowbit.report").joinpath(name)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def _rows(blocks: list[dict] | None) -> list[dict]:
    return [r for b in blocks or [] for r in b.get("rows", [])]


def _kv_quality_section(blocks: list[dict]) -> str:
    rows = _rows(blocks)
    models = [b.get("model", "") for b in blocks]
    dates = sorted({b["date"] for b in blocks if "date" in b})
    setup = blocks[0].get("setup", {})
    text = (blocks[0].get("text") or {}).get("name") or setup.get("text", "text")
    devices = sorted({str(b.get("device", "CPU")).split(" (")[0] for b in blocks})
    commands = "".join(f"<li><code>{html.escape(public_command(b['command']))}</code></li>" for b in blocks
                       if "command" in b)
    tab, clamped = _measured_table(KV_COLUMNS, rows)
    return f"""<h2 id="kv-quality">KV-cache quality, measured</h2>
<p>How much each KV-cache format changes the next-token distribution of {html.escape(' and '.join(models))}
(small models that run on a CPU; no Qwen3.5 model was measured): KL divergence against the same model with an
f16 cache, {setup.get('tokens', '')} tokens of {html.escape(str(text))} in windows of
{setup.get('context', '')}. Lower is better; f16 itself is the reference (zero) and is left out of the plot.</p>
{_figure(lambda n: quality_figure(rows, n), "KL divergence against the f16 cache for each KV format and model")}
<p class=prov>measured {html.escape(', '.join(dates))} on {html.escape(', '.join(devices))}; bits per value: exact, from the format definition
(head dimension {', '.join(str(r['head_dim']) for r in rows if r['kv_k'] == r['kv_v'] == 'f16')}).
f16 edge layers: the first and last n layers keep an f16 cache. Needle found: a phrase hidden in the text at
several depths, recalled or not.
{CLAMP_NOTE if clamped else ''} Commands and discussion: docs/turboquant.md.</p>
<details><summary>Commands</summary><ul>{commands}</ul></details>
{_frontier_section(blocks)}
{tab}"""


def _frontier_blocks(blocks: list[dict] | None) -> list[dict]:
    """The models measured with per-window figures (intervals): each gets a frontier table and plot."""
    return [b for b in blocks or [] if b.get("rows") and has_intervals(b)]


def _frontier_section(blocks: list[dict]) -> str:
    parts = []
    for b in _frontier_blocks(blocks):
        pts = analyse(b)
        t = frontier_table(b, pts)
        cells = [[Cell(c, t.right(i)) for i, c in enumerate(r)] for r in t.rows]
        text = (b.get("text") or {}).get("name", "")
        parts.append(f"""<h3>{html.escape(str(b['model']))}: which KV format at which size</h3>
{_figure(lambda n, b=b, pts=pts: frontier_figure(b, n, pts), f"{b['model']}: bits per value against KL divergence and needles found")}
<p class=prov>measured {html.escape(str(b.get('date', '')))} on {html.escape(str(b.get('device', '')))}, lowbit
{html.escape(str(b.get('lowbit_commit', '')))}; {html.escape(text)}; <code>{html.escape(public_command(b.get('command', '')))}</code>.
{html.escape(t.caption)}</p>
{table([c.replace(chr(10), ' ') for c in t.columns], cells)}""")
    return "".join(parts)


def _weights_section(blocks: list[dict]) -> str:
    rows = _rows(blocks)
    tab, clamped = _measured_table(WEIGHT_COLUMNS, rows)
    desc = " ".join(b.get("description", "") for b in blocks)
    return f"""<h2 id="weights-quality">Weight-format quality, measured</h2>
<p>Each row re-quantizes a small model's weights (as shipped in its GGUF file) and measures perplexity and the
change of its next-token distribution. "Blocks" counts only the transformer blocks' matrices; the whole-model
figure also counts the embedding and norms, which llama.cpp keeps at higher precision.
A row with a KV format ran with that KV cache too.</p>
<p class=prov>{html.escape(desc)} {CLAMP_NOTE if clamped else ''}</p>
{tab}"""


def _runs(blocks: list[dict]) -> str:
    """One line per measured run: what, when, where, at which commit, by which command."""
    return "".join(f"<li>{html.escape(b.get('description', ''))}: {html.escape(b.get('date', ''))}, "
                   f"{html.escape(b.get('device', ''))}, lowbit {html.escape(b.get('commit', ''))}, "
                   f"<code>{html.escape(public_command(b.get('command', '')))}</code></li>" for b in blocks)


def _kernels_section(blocks: list[dict], e2e_blocks: list[dict] | None = None) -> str:
    rows = _rows(blocks)
    tab, _ = _measured_table(KERNEL_COLUMNS, rows)
    return f"""<h2 id="kernels">GPU decode attention over the packed cache, measured</h2>
<p>Time for one attention layer to attend one new token per sequence, reading the cache in its packed form
(one CUDA kernel for turbo3 keys and values and for q8_0 keys with turbo3 or turbo4 values, the settings the quality
tables recommend), against the fastest bf16 SDPA backend on the same GPU. Above 1x the packed cache is faster.
The kernel is bound by the instructions it needs to unpack each byte, not by memory: Nsight Compute measured 29–31%
of DRAM bandwidth for turbo3 at 32K, batch 8, with warps almost never waiting on memory (0.06 stall cycles per
instruction) and the schedulers issuing in 55–62% of cycles; a variant with half again as many warps per SM ran
slower, in proportion to its extra instructions (lowbit 2ebd073 and 4820d61, docs/kernels.md §R4 and §R10). With the
codes' unpacking made nearly free (an experiment, not a kernel: lowbit 48a531c,
<code>python benchmarks/decode_unpack_ceiling.py</code>, §R11), turbo3 would reach 2.1–2.6x at batch 8 and 32.
Writing new tokens into the cache is one fused kernel too (rotate, quantize, pack): 2 M turbo3 head vectors of
128 in 0.41 ms on the H200, 32% of its memory bandwidth and 60x the PyTorch reference, measured 2026-11-30 at lowbit
73d2cfb by <code>python benchmarks/store_kernel.py --format json --tiles 64/4</code> (docs/kernels.md §R7); q8_0 keys
(llama.cpp's Hadamard, then ggml's q8_0) 2 M vectors of 128 in 0.76 ms on the same H200, 16x the torch path they
replaced, measured 2026-11-30 at lowbit c35611b by <code>python benchmarks/store_kernel.py --only q8_0</code>.</p>
{_figure(lambda n: kernels_figure(rows, n), "decode attention speedup over bf16 per layer shape, context, K/V format and batch")}
<ul class=prov>{_runs(blocks)}</ul>
<p class=prov>Per-row notes and the targets: docs/kernels.md.</p>
{tab}{_e2e_part(e2e_blocks) if _rows(e2e_blocks) else ""}"""


def _section(block: dict) -> str:
    """Where the docs discuss a measured block: the parenthesis that ends its source ("docs/kernels.md §R5d")."""
    source = block.get("source", "")
    return source[source.rfind("(") + 1:-1] if source.endswith(")") else "docs/kernels.md"


def _batch1_share(blocks: list[dict]) -> str:
    """What the packed cache's own kernels cost in a batch-1 step against bf16's attention, from the first profiled
    turbo3 run that has its bf16 baseline (measured: the block's commit, `--profile`)."""
    attention, merge, store = (groups for _, _, groups in STEP_PARTS[1:4])
    for b in blocks:
        rows = {(r["model"], r["context"], r["batch"], r["kv"]): r for r in b["rows"] if r.get("profile_us")}
        for (model, ctx, batch, kv), r in rows.items():
            base = rows.get((model, ctx, batch, "bf16"))
            if batch != 1 or kv != "turbo3/turbo3" or base is None:
                continue
            ours = sum(r["profile_us"].get(g, 0.0) for g in (*attention, *merge, *store))
            bf16 = sum(base["profile_us"].get(g, 0.0) for g in attention)
            return (f" At batch 1 a step is mostly weights: for {html.escape(model)} at {fmt_tokens(ctx)} the cache's "
                    f"own kernels (storing K and V, decode, merge, query rotation) take {ours / 1e3:.1f} ms of the "
                    f"{sum(r['profile_us'].values()) / 1e3:.1f} ms of kernels in a turbo3 step, bf16's attention "
                    f"{bf16 / 1e3:.1f} ms (measured at lowbit {html.escape(b['commit'])} by "
                    f"<code>decode_e2e.py --profile</code>, {html.escape(_section(b))}).")
    return ""


def free_attention(row: dict) -> float | None:
    """A bf16 row's ceiling for any cache: its step less its attention layers' measured bf16 SDPA time."""
    att = row.get("attention_ms")
    return None if att is None else row["step_ms"] / (row["step_ms"] - att)


def _ceilings(rows: list[dict]) -> str:
    """The range of the free-attention ceilings per model (": from 1.04x to 1.75x for qwen3.5-27b and ...")."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r.get("free_attention"):
            by.setdefault(r["model"], []).append(r["free_attention"])
    parts = [f"from {min(v):.2f}x to {max(v):.2f}x for {html.escape(m)}" for m, v in by.items()]
    return ": " + " and ".join(parts) if parts else ""


def _e2e_part(blocks: list[dict]) -> str:
    rows = [{**r, "free_attention": free_attention(r)} if "attention_ms" in r else r for r in _rows(blocks)]
    tab, _ = _measured_table(E2E_COLUMNS, rows)
    profiled = [r for r in _rows(blocks) if r.get("profile_us")]
    steps = "" if not profiled else f"""
<p>Where a step's time goes (kernels only, measured with <code>decode_e2e.py --profile</code>): at batch 1 the
weights' matrix products dominate and attention is a small part for every cache; at batch 8 attention is the part
the packed cache shrinks.</p>
{_figure(lambda n: step_figure(profiled, n), "device time per decode step by kernel group, per context, batch and cache")}"""
    return f"""<h3>Whole-model decode</h3>
<p>What a user sees is the whole step, not one layer: the kernel's gain shrinks by the share of the step that
attention takes. Llama-3.1-8B attends in all 32 layers; Qwen3.5-27B in 16 of 64 (the rest are Gated DeltaNet
layers, whose state does not grow with the context). Each bf16 row also says how much faster its step would be
if attention cost nothing (the step less its attention layers' bf16 SDPA time, measured in the same run): the
ceiling for any KV format at that size{_ceilings(rows)}. Where the bf16 cache does not fit in the GPU, the packed
cache still decodes: the row has no speedup and says so.{_batch1_share(blocks)}</p>
<ul class=prov>{_runs(blocks)}</ul>
{tab}{steps}"""


# ---------------------------------------------------------------------------------------------------- summary


def _best(rows: list[dict], model: str, pick: Callable[[dict], bool]) -> dict | None:
    cands = [r for r in rows if r.get("model") == model and pick(r) and r.get("ppl") is not None]
    return min(cands, key=lambda r: r["ppl"]) if cands else None


def summary(result: dict, units: str, kv_rows: list[dict], weight_rows: list[dict],
            size_checks: list[tuple[dict, int, int]] = ()) -> str:
    """A few lines: the seed's headline claims against the audit's exact figures and what was measured."""
    c = {r["id"]: r for r in result["claims"]}

    def gb(n: int) -> str:
        return f"{fmt_bytes(n, units)} {units}"

    items = []
    if all(k in c for k in ("122b-today-weights", "122b-today-kv", "122b-today-total")):
        w, kv, tot = c["122b-today-weights"], c["122b-today-kv"], c["122b-today-total"]
        cfg = resolve(KV_MODEL).config
        items.append(
            f"<b>Qwen3.5-122B-A10B today</b> (Q4_K_M, f16 KV): post {gb(tot['claimed_bytes'])} "
            f"({gb(w['claimed_bytes'])} weights + {gb(kv['claimed_bytes'])} KV); exact "
            f"<b>{gb(tot['exact_bytes'])}</b> ({gb(w['exact_bytes'])} + {gb(kv['exact_bytes'])}). The post's KV "
            f"is {kv['claimed_bytes'] / kv['exact_bytes']:.1f}x too large: only {cfg.count('full_attention')} of "
            f"{cfg.num_layers} layers hold a KV cache, with {max(cfg.num_kv_heads)} KV heads.")
    if "122b-after-total" in c:
        tot = c["122b-after-total"]
        items.append(f"<b>With 1-bit weights and TurboQuant</b> (Q1_0, turbo3 KV): post {gb(tot['claimed_bytes'])};"
                     f" exact <b>{gb(tot['exact_bytes'])}</b> (the post is {abs(tot['error']):.1%} "
                     f"{'low' if tot['error'] < 0 else 'high'}).")
    if "122b-ratio" in c:
        r, fam = c["122b-ratio"], c.get("family-4-5x")
        line = f"<b>Saving</b>: post over {r['claimed_ratio']:g}x; exact <b>{r['exact_ratio']:.2f}x</b>"
        if fam:
            lo, hi = min(fam["exact_ratios"].values()), max(fam["exact_ratios"].values())
            line += (f"; across the family {lo:.2f}-{hi:.2f}x (post: {fam['claimed_range'][0]:g}-"
                     f"{fam['claimed_range'][1]:g}x)")
        items.append(line + ".")
    small = []
    for key, name in (("35b-under-6gb", "35B-A3B"), ("4b-under-2gb", "4B")):
        if key in c:
            s = c[key]
            small.append(f"{name} under {gb(s['claimed_bytes'])}: <b>{'yes' if s['holds'] else 'no'}</b>, "
                         f"{gb(s['exact_bytes'])}"
                         + (f" (under it up to {s['largest_context']:,} tokens)" if s.get("largest_context") else ""))
    if small:
        items.append("<b>Small models</b>: " + "; ".join(small) + ".")
    quality = []
    kl = {r["model"]: r["kld"] for r in kv_rows if r.get("kv_k") == r.get("kv_v") == "turbo3" and not r.get("boundary")}
    if kl:
        quality.append("turbo3 KV: KL divergence " + " and ".join(f"{fmt_kl(v)[0]} ({html.escape(m)})"
                                                                  for m, v in kl.items()) + " against f16")
    one_bit = [(m, r) for m in dict.fromkeys(r["model"] for r in weight_rows)
               if (r := _best(weight_rows, m, lambda r: not r.get("kv") and r.get("body_bits_per_weight", 9) < 1.5))]
    if one_bit:
        quality.append("1-bit weights made from a model trained at full precision (lowbit's best method): "
                       "perplexity " + " and ".join(f"from {fmt_large(r['ppl_reference'])} to {fmt_large(r['ppl'])} "
                                                    f"({html.escape(m)})" for m, r in one_bit))
    if quality:
        items.append("<b>Quality</b>, measured on small models (no Qwen3.5): " + "; ".join(quality) + ".")
    if size_checks:
        exact = sum((dk, ds) == (0, 0) for _, dk, ds in size_checks)
        models = " and ".join(dict.fromkeys(html.escape(r["model"]) for r, _, _ in size_checks))
        items.append(f"<b>Checked on a GPU</b>: {models} at full size on an H200, bf16 and packed caches up to "
                     f"{max(r['context'] for r, _, _ in size_checks):,} tokens: the KV cache and recurrent state held "
                     f"the planned bytes exactly in {exact} of {len(size_checks)} runs.")
    held = sum(r["holds"] for r in result["claims"])
    return (f'<section class="summary"><h2 id="summary">In short</h2>'
            f"<p>A viral post said 1-bit weights and a TurboQuant KV cache shrink Qwen3.5 models 4-8.5x. lowbit "
            f"computes the bytes exactly (llama.cpp's layout, {result['context']:,} tokens, 1 sequence): "
            f"<b>{held} of {len(result['claims'])} figures hold</b> within 1%.</p>"
            f"<ul>{''.join(f'<li>{i}</li>' for i in items)}</ul>"
            f'<p class=prov>Details: <a href="#audit">the claims one by one</a>, '
            f'<a href="#kv-quality">KV quality</a>, <a href="#weights-quality">weight quality</a>.</p></section>')


# ---------------------------------------------------------------------------------------------------- page


CSS = """*{box-sizing:border-box}
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:1em 12px 3em;color:#222}
h1{font-size:1.5em;line-height:1.25}h2{margin-top:2em;border-bottom:1px solid #ddd;font-size:1.25em}
p,li{max-width:52em}code{font-size:.9em;overflow-wrap:anywhere}
.summary{background:#f5f8fc;border:1px solid #dbe4ef;border-radius:6px;padding:.2em 1em .6em}
.summary h2{margin-top:.6em;border:0}.summary li{margin:.35em 0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.5em 0 1em;max-width:100%}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 7px;vertical-align:top}
th{background:#f3f5f8;text-align:center;font-weight:600;min-width:5em}
td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}td.txt{text-align:left}
td.quote,td.note{white-space:normal;min-width:15em}
tr:nth-child(even) td{background:#fafafa}
.prov{color:#555;font-size:13px}.bad{color:#b02a2a}.good{color:#2a7a2a}
figure{margin:1em 0}img{max-width:100%;height:auto;display:block}
details{font-size:13px;color:#555;margin:.3em 0}"""


REPORT_ROOM = 8 << 20  # bytes to have free before drawing: the page is about 0.4 MB


def build(out: Path, units: str = "GB", context: int = 262_144, force: bool = False, progress: bool = True) -> Path:
    """Write the report to `out` (an existing file only with `force`); the plots take seconds, so the
    target is checked before they are drawn, and a bar runs over them on a terminal."""
    out = check_target(out, force, need_bytes=REPORT_ROOM)
    data = {n: _read(f"{n}.json") for n in ("kv_quality", "weights_quality", "kernels", "decode_e2e", "real_size")}
    kv_rows, kernel_rows = _rows(data["kv_quality"]), _rows(data["kernels"])
    profiled = bool(kernel_rows) and any(r.get("profile_us") for r in _rows(data["decode_e2e"]))
    plots = 2 + bool(kv_rows) + len(_frontier_blocks(data["kv_quality"])) + bool(kernel_rows) + profiled
    bar, task = progress_bar(progress, "drawing the report", plots, unit="plots")
    with bar:
        token = _FIGURE_DRAWN.set(lambda: bar.advance(task))
        try:
            return _build(out, units, context, force, data)
        finally:
            _FIGURE_DRAWN.reset(token)


def _build(out: Path, units: str, context: int, force: bool, data: dict[str, list[dict] | None]) -> Path:
    """The page from the shipped measurements `data` (read once by `build`)."""
    sim = simulate(context=context)
    result = audit()
    kv_blocks, weight_blocks, kernel_blocks, e2e_blocks, size_blocks = (data[n] for n in (
        "kv_quality", "weights_quality", "kernels", "decode_e2e", "real_size"))
    size_checks = _real_size_checks(size_blocks)  # one plan per run, shown in the summary and in its section
    cfg = resolve(KV_MODEL).config
    measured = "".join([_kv_quality_section(kv_blocks) if _rows(kv_blocks) else "",
                        _weights_section(weight_blocks) if _rows(weight_blocks) else "",
                        _kernels_section(kernel_blocks, e2e_blocks) if _rows(kernel_blocks) else ""])
    scen = sim.scenarios
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lowbit report: 1-bit weights and TurboQuant KV caches</title><style>{CSS}</style></head><body>
<h1>What 1-bit weights and TurboQuant KV caches really cost</h1>
{summary(result, units, _rows(kv_blocks), _rows(weight_blocks), size_checks)}
<p class=prov>Generated {dt.date.today().isoformat()} by <code>lowbit report</code>. Units: {units}
(1 GB = 10<sup>9</sup> bytes, 1 GiB = 2<sup>30</sup>). <b>exact</b> = format definition x tensor shapes
(llama.cpp's layout); <b>estimated</b> = runtime buffers (the assumption is named in <code>lowbit plan</code>);
<b>measured</b> = from a run, with its command. How lowbit counts: docs/simulator.md.</p>
<h2 id="family">The Qwen3.5 family at {context:,} tokens</h2>
<p>Memory for one sequence of {context:,} tokens, {' against '.join(s.label() for s in scen)}. Each model has its
own scale; the label on a bar is its total in {units}, the panel's title the saving.</p>
{_figure(lambda n: family_figure(sim, units, n), "memory per Qwen3.5 model, today against 1-bit weights and turbo3")}
{_family_table(sim, units)}
<p class=prov>weights, KV cache, state: exact. runtime: {html.escape(sim.plans[0].provenance()['runtime_bytes'])}.
The same table in a terminal: <code>lowbit simulate --context {context}</code>.</p>
{_speed_section(sim)}
<h2 id="kv-context">KV cache against context</h2>
<p>{KV_MODEL}: KV-cache bytes for one sequence by format (exact). Only the {cfg.count('full_attention')}
full-attention layers of {cfg.num_layers} hold a KV cache ({max(cfg.num_kv_heads)} KV heads of {cfg.head_dim}
values each; the others keep a fixed-size recurrent state); llama.cpp pads the context to 256 cells.</p>
{_figure(lambda n: kv_figure(KV_MODEL, KV_FORMATS, units, n), f"KV cache of {KV_MODEL} against context by format")}
<p class=prov>exact. One point: <code>lowbit plan {KV_MODEL} --kv turbo3 --context 131072</code>.
The formats: docs/turboquant.md.</p>
{_real_size_section(size_blocks, size_checks) if size_checks else ""}
<h2 id="audit">The post's claims, one by one</h2>
<p>Each figure from the post beside lowbit's exact figure at {result['context']:,} tokens (today =
{html.escape(result['scenarios']['today'])}, 1-bit = {html.escape(result['scenarios']['1bit-turbo'])}). A claim
holds within 1%. Where it does not, lowbit searched named assumptions the post may have made and shows the
nearest.</p>
<p class=prov>Source: {html.escape(result['source'])}. {html.escape(result['note'])}</p>
{_audit_table(result, units)}
{measured}
</body></html>"""
    return write_text(out, page, force)
