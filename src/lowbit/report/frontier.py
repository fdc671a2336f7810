"""The KV-format frontier: which format is best at its size, from kv_quality.json, intervals taken into account.

A row (one K/V setting measured on one model) is *dominated* when another row costs at most as many bits per
value and is better beyond the 95% interval of their paired difference (bootstrap over the same windows for
KL divergence, over the same needles for retrieval): the rows left are the frontier, the formats best at
their size. Two rows whose paired difference holds 0 are *tied* (the measurement does not tell them apart),
whatever their sizes; the table lists each frontier row's ties. A file measured without per-window figures
(before intervals were kept) is ranked on its point values and says so.

One table (`frontier_table`, also as markdown: `frontier_markdown`) and one figure (`frontier_figure`: bits per
value against KL divergence with interval bars, and against needles found) per model; the HTML report and
the docs generator (benchmarks/kv_frontier.py --write-docs) both call these.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from lowbit.eval.bootstrap import (BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, MIN_WINDOWS, Interval, WindowStats,
                                   binomial_interval,
                                   paired_difference, paired_trials_difference, quality_intervals, row_stats)
from lowbit.report.render import Table

FAMILY_COLORS = {"llama.cpp": "#3b6ea8", "turbo": "#e08a2c", "K/V mixed": "#5b9a53", "kivi": "#a04ca0",
                 "f16": "#444444", "other": "#8c6d31"}


def label(row: dict) -> str:
    """`turbo3`, `q8_0/turbo4`, `turbo3 (+2 f16 edge layers)`."""
    name = row["kv_k"] if row["kv_k"] == row["kv_v"] else f"{row['kv_k']}/{row['kv_v']}"
    return name + (f" (+{row['boundary']} f16 edge layers)" if row.get("boundary") else "")


def family(row: dict) -> str:
    k, v = row["kv_k"], row["kv_v"]
    if k != v:
        return "K/V mixed"
    base = k.split(":")[0]
    if base in ("f16", "bf16", "f32"):
        return "f16"
    if base.startswith("turbo"):
        return "turbo"
    if base.startswith("kivi"):
        return "kivi"
    if base in ("q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "iq4_nl"):
        return "llama.cpp"
    return "other"


@dataclass
class Point:
    row: dict
    label: str
    bits: float
    kld: Interval | None  # with its interval when the row has per-window figures, else the point alone
    ppl_ratio: Interval | None
    top1: Interval | None
    niah: Interval | None
    stats: WindowStats | None = None
    best_kld: bool = False
    best_niah: bool = False
    dominated_kld: str | None = None  # a row that dominates this one
    dominated_niah: str | None = None
    ties: list[str] = field(default_factory=list)  # rows the KL divergence does not tell apart from this one

    @property
    def family(self) -> str:
        return family(self.row)


def _point(row: dict, samples: int, seed: int) -> Point:
    stats = None
    kld = ppl = top1 = None
    if isinstance(row.get("windows"), dict) and "kld" in row["windows"] \
            and len(row["windows"]["kld"]) >= MIN_WINDOWS:
        stats, ref = row_stats(row)
        iv = quality_intervals(stats, ref, samples=samples, seed=seed)
        kld, ppl, top1 = iv["kld"], iv["ppl_ratio"], iv["top1"]
    else:
        if row.get("kld") is not None:
            kld = Interval(max(0.0, row["kld"]), max(0.0, row["kld"]), max(0.0, row["kld"]))
        if row.get("ppl") is not None and row.get("ppl_f16"):
            r = row["ppl"] / row["ppl_f16"]
            ppl = Interval(r, r, r)
        if row.get("top1") is not None:
            top1 = Interval(row["top1"], row["top1"], row["top1"])
    niah = None
    trials = row.get("niah_trials") or []
    if trials:
        niah = binomial_interval(sum(bool(t["found"]) for t in trials), len(trials))
    return Point(row, label(row), float(row["bits_per_value"]), kld, ppl, top1, niah, stats)


def _trial_key(row: dict) -> tuple:
    return tuple((t["length"], t["depth"]) for t in row.get("niah_trials") or [])


def _kld_better(b: Point, a: Point, samples: int, seed: int) -> bool | None:
    """True: b's KL divergence is lower than a's beyond the interval; None: not told apart."""
    if b.stats is not None and a.stats is not None:
        d = paired_difference(b.stats, a.stats, "kld", samples=samples, seed=seed)
        return True if d.hi < 0 else (False if d.lo > 0 else None)
    if b.kld is None or a.kld is None:
        return False
    return True if b.kld.value < a.kld.value else (False if b.kld.value > a.kld.value else None)


def _niah_better(b: Point, a: Point, samples: int, seed: int) -> bool:
    if b.niah is None or a.niah is None:
        return False
    if _trial_key(b.row) == _trial_key(a.row):  # the same needles: paired
        d = paired_trials_difference([t["found"] for t in b.row["niah_trials"]],
                                     [t["found"] for t in a.row["niah_trials"]], samples=samples, seed=seed)
        return d.lo > 0
    return b.niah.lo > a.niah.hi  # other needles: the intervals must not overlap


def analyse(block: dict, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> list[Point]:
    """The rows of one model's block, most bits first, with the frontier and the ties marked."""
    pts = [_point(r, samples, seed) for r in block.get("rows", []) if r.get("bits_per_value") is not None]
    eps = 1e-9
    for a in pts:
        for b in pts:
            if b is a or b.bits > a.bits + eps:
                continue
            if a.dominated_kld is None and a.kld is not None and _kld_better(b, a, samples, seed):
                a.dominated_kld = b.label
            if a.dominated_niah is None and _niah_better(b, a, samples, seed):
                a.dominated_niah = b.label
        a.best_kld = a.kld is not None and a.dominated_kld is None
        a.best_niah = a.niah is not None and a.dominated_niah is None
    for a in pts:
        if a.best_kld:
            a.ties = [b.label for b in pts if b is not a and b.kld is not None and a.stats is not None
                      and b.stats is not None and _kld_better(b, a, samples, seed) is None]
    return sorted(pts, key=lambda p: (-p.bits, p.kld.value if p.kld else float("inf")))


def has_intervals(block: dict) -> bool:
    return any(isinstance(r.get("windows"), dict) and len(r["windows"].get("kld") or []) >= MIN_WINDOWS
               for r in block.get("rows", []))


def _iv(iv: Interval | None, digits: int, same: float | None = None) -> str:
    if iv is None:
        return "-"
    if iv.lo == iv.hi == iv.value:
        return f"{iv.value:.{digits}f}"
    mark = "~" if same is not None and iv.contains(same) else ""
    return f"{mark}{iv.value:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def _niah_cell(p: Point) -> str:
    if p.niah is None:
        return "-"
    trials = p.row["niah_trials"]
    return f"{sum(bool(t['found']) for t in trials)}/{len(trials)} [{p.niah.lo:.2f}, {p.niah.hi:.2f}]"


def niah_setting(block: dict) -> str:
    """`8,192-token prompts, 10 needles` from the rows' trials."""
    trials = next((r["niah_trials"] for r in block.get("rows", []) if r.get("niah_trials")), [])
    if not trials:
        return "not run"
    lengths = sorted({t["length"] for t in trials})
    return f"{'/'.join(f'{n:,}' for n in lengths)}-token prompts, {len(trials)} needles"


def frontier_table(block: dict, points: list[Point] | None = None) -> Table:
    pts = analyse(block) if points is None else points
    setup = block.get("setup", {})
    text = (block.get("text") or {}).get("name") or setup.get("text", "")
    intervals = has_intervals(block)
    t = Table(f"{block.get('model')}: KV formats by size, {setup.get('tokens', '?'):,} text tokens ({text}), "
              f"context {setup.get('context', '?')}; NIAH {niah_setting(block)}"
              if isinstance(setup.get("tokens"), int) else f"{block.get('model')}: KV formats by size",
              ["K/V", "bits/value", "PPL / f16", "KLD (nats)", "top-1", "NIAH found", "best at size\n(KLD, NIAH)",
               "not told apart (KLD)"], right_align_from=1, left_from=6)
    for p in pts:
        best = ", ".join(x for x, on in (("KLD", p.best_kld), ("NIAH", p.best_niah)) if on) or "-"
        t.add(p.label, f"{p.bits:.3f}", _iv(p.ppl_ratio, 3, same=1.0), _iv(p.kld, 4), _iv(p.top1, 3),
              _niah_cell(p), best, ", ".join(p.ties) if p.ties else "-")
    t.caption = (("[a, b]: 95% interval, bootstrap over windows paired with the f16 run on the same windows; "
                  "'~': the PPL ratio's interval holds 1. NIAH: needles found, 95% Wilson interval. "
                  if intervals else "Measured without per-window figures: point values only, no intervals. ")
                 + "best at size: no row with at most as many bits is better beyond the interval of the paired "
                 "difference (KLD: over windows; NIAH: over the same needles). not told apart: rows whose paired "
                 "KLD difference from this one has an interval holding 0. Bits per value: exact.")
    return t


def frontier_markdown(block: dict, points: list[Point] | None = None) -> str:
    buf = io.StringIO()
    frontier_table(block, points).render("markdown", buf)
    return buf.getvalue()


def frontier_figure(block: dict, narrow: bool = False, points: list[Point] | None = None):
    """Two panels: bits per value against KL divergence (log axis, 95% bars; f16 is the reference, left out)
    and against the fraction of needles found (Wilson bars). Frontier rows in colour, named and joined; the rest
    grey."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    pts = analyse(block) if points is None else points
    fig = plt.figure(figsize=(3.8, 7.4) if narrow else (10.0, 4.4), layout="constrained")
    ax_k, ax_n = fig.subplots(2, 1) if narrow else fig.subplots(1, 2)
    floor = 1e-5
    for ax, what in ((ax_k, "kld"), (ax_n, "niah")):
        best = [p for p in pts if (p.best_kld if what == "kld" else p.best_niah)]
        for p in pts:
            iv = p.kld if what == "kld" else p.niah
            if iv is None or (what == "kld" and p.family == "f16"):
                continue
            on = p in best
            y = max(iv.value, floor) if what == "kld" else iv.value
            err = [[max(y - max(iv.lo, floor if what == "kld" else 0.0), 0.0)], [max(iv.hi - y, 0.0)]]
            color = FAMILY_COLORS[p.family] if on else "#b9b9b9"
            ax.errorbar([p.bits], [y], yerr=err, fmt="o" if on else ".", color=color, ms=5 if on else 4,
                        elinewidth=0.8, capsize=2, zorder=3 if on else 2)
            if on:  # grey points stay unnamed: the table beside the plot names every row
                ax.annotate(p.label, (p.bits, y), xytext=(3, 2), textcoords="offset points",
                            fontsize=8 if narrow else 7, color="#222")
        line = sorted((p.bits, max(p.kld.value, floor) if what == "kld" else p.niah.value) for p in best
                      if not (what == "kld" and p.family == "f16"))
        if line:
            ax.plot(*zip(*line), color="#444", linewidth=0.8, alpha=0.6, zorder=1, drawstyle="steps-post")
        ax.set_xlabel("bits per value (exact)")
        ax.grid(alpha=0.3, which="both")
        ax.set_axisbelow(True)
        if what == "kld":
            ax.set_yscale("log")
            ax.set_ylabel("KL divergence vs f16 (nats, log)")
        else:
            ax.set_ylim(-0.05, 1.05)
            ax.set_ylabel("needles found (share)")
            ax.set_title(niah_setting(block), fontsize=8)
    handles = [Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in FAMILY_COLORS.items()
               if any(p.family == f for p in pts)]
    handles.append(Line2D([], [], marker=".", ls="", color="#b9b9b9", label="dominated"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4 if narrow else len(handles), frameon=False,
               fontsize=8)
    sep = "\n" if narrow else " "
    fig.suptitle(f"{block.get('model')}:{sep}KV formats, best at their size in colour", fontsize=10)
    _declutter(fig, (ax_k, ax_n))
    return fig


def _declutter(fig, axes) -> None:
    """Move each point's label up until it overlaps no label placed before it; drop a label that would leave its
    panel (the tables carry every value). Formats of equal size and score share a point, so labels pile up."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px_to_pt = 72.0 / fig.dpi
    for ax in axes:
        inside = ax.get_window_extent(renderer)
        labels = sorted(ax.texts, key=lambda t: tuple(ax.transData.transform(t.xy)))
        placed = []
        for t in labels:
            box = t.get_window_extent(renderer).padded(2)
            if box.x1 > inside.x1:  # the rightmost points: the label goes to the left of its point
                t.set_horizontalalignment("right")
                t.xyann = (-t.xyann[0], t.xyann[1])
                box = t.get_window_extent(renderer).padded(2)
            for _ in range(40):
                hit = next((b for b in placed if b.overlaps(box)), None)
                if hit is None:
                    break
                t.xyann = (t.xyann[0], t.xyann[1] + (hit.y1 - box.y0 + 1) * px_to_pt)
                box = t.get_window_extent(renderer).padded(2)
            if hit is not None or box.y1 > inside.y1 or box.x1 > inside.x1 or box.x0 < inside.x0:
                t.remove()
                continue
            placed.append(box)


def save_figure(block: dict, path, points: list[Point] | None = None, dpi: int = 150) -> None:
    """The figure as a PNG file (the docs' copy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = frontier_figure(block, False, points)
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
