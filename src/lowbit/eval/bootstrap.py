"""95% confidence intervals for window-based quality figures: a seeded, paired bootstrap over windows.

Evaluation windows are the independent units (tokens inside a window share their context, so they are not):
each bootstrap draw picks n windows with replacement and recomputes the figure from the drawn windows' sums.
A format and the f16 reference are scored on the SAME windows, so a draw takes both from the same windows
(paired): the window-to-window spread of the text (some windows are simply harder) cancels in a ratio or a
difference, and only the format's own effect varies.

    WindowStats    per-window sums of one evaluation: NLL, KLD, top-1 matches and scored-token counts
    ppl_ratio      exp((NLL_a - NLL_b) / tokens) over the drawn windows: a's perplexity over b's
    mean_kld, mean_top1   KLD and top-1 per scored token over the drawn windows
    paired_difference     a's figure minus b's, both on the same drawn windows
    Interval       point estimate (all windows), [lo, hi] percentile interval, and whether it holds a value

The interval is the percentile interval of BOOTSTRAP_SAMPLES draws (default 2000) from a numpy generator
seeded with `seed`: the same data and seed give the same interval on every machine.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from lowbit.errors import LowbitError

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
# A bootstrap over n windows has at most n^n distinct draws, and one window none at all: below this, results
# carry no interval (the per-window sums are still kept).
MIN_WINDOWS = 4


@dataclass(frozen=True)
class WindowStats:
    """Sums per evaluation window (arrays of equal length, one entry per window)."""

    nll: np.ndarray  # sum of negative log-likelihoods of the scored tokens
    tokens: np.ndarray  # scored tokens
    kld: np.ndarray | None = None  # sum of KL(reference || test) over the scored tokens
    top1: np.ndarray | None = None  # scored tokens whose argmax agrees with the reference's

    def __post_init__(self):
        n = len(self.nll)
        for name in ("nll", "tokens", "kld", "top1"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, np.asarray(v, dtype=np.float64))
                if getattr(self, name).shape != (n,):
                    raise LowbitError(f"window stats: {name} has {len(v)} entries, nll has {n}")
        if n == 0:
            raise LowbitError("window stats: no windows")

    @property
    def n(self) -> int:
        return len(self.nll)

    def as_dict(self) -> dict:
        """Plain lists for JSON (rounded to 7 significant digits: far below any interval's width)."""
        out = {}
        for name in ("nll", "tokens", "kld", "top1"):
            v = getattr(self, name)
            if v is not None:
                out[name] = [int(x) if name in ("tokens", "top1") else float(f"{x:.7g}") for x in v]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "WindowStats":
        return cls(np.asarray(d["nll"]), np.asarray(d["tokens"]),
                   None if d.get("kld") is None else np.asarray(d["kld"]),
                   None if d.get("top1") is None else np.asarray(d["top1"]))


@dataclass(frozen=True)
class Interval:
    value: float  # on all windows
    lo: float
    hi: float
    level: float = LEVEL

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def as_list(self) -> list[float]:
        return [self.lo, self.hi]

    def text(self, digits: int = 3) -> str:
        """`1.066 [1.058, 1.074]`."""
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def draws(n_windows: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Window counts per draw: int array [samples, n_windows], row s = how often draw s took each window.

    Counts (a multinomial draw per row) rather than indices, so a statistic over sums is one matrix product.
    The same (n_windows, samples, seed) always gives the same draws: every figure and every pair compared in
    one report is resampled with the same draws, which is what makes the comparisons paired.
    """
    if n_windows < 1 or samples < 1:
        raise LowbitError(f"bootstrap needs at least one window and one sample (got {n_windows}, {samples})")
    return _draws(int(n_windows), int(samples), int(seed))


@functools.lru_cache(maxsize=8)
def _draws(n_windows: int, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_windows, size=(samples, n_windows))
    counts = np.zeros((samples, n_windows), dtype=np.float64)
    np.add.at(counts, (np.arange(samples)[:, None], idx), 1.0)
    counts.flags.writeable = False  # shared by every caller
    return counts


def _interval(point: float, boot: np.ndarray, level: float) -> Interval:
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return Interval(float(point), float(lo), float(hi), level)


def _check_pair(a: WindowStats, b: WindowStats) -> None:
    if a.n != b.n or not np.array_equal(a.tokens, b.tokens):
        raise LowbitError("paired statistics need the same windows (counts differ)")


def ppl_ratio(a: WindowStats, b: WindowStats, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
              level: float = LEVEL) -> Interval:
    """Perplexity of a over perplexity of b on the same windows (b is usually the f16 reference)."""
    _check_pair(a, b)
    c = draws(a.n, samples, seed)
    d = a.nll - b.nll
    point = math.exp(d.sum() / a.tokens.sum())
    return _interval(point, np.exp((c @ d) / (c @ a.tokens)), level)


def _mean(values: np.ndarray, tokens: np.ndarray, samples: int, seed: int, level: float) -> Interval:
    c = draws(len(values), samples, seed)
    return _interval(values.sum() / tokens.sum(), (c @ values) / (c @ tokens), level)


def mean_kld(a: WindowStats, **kw) -> Interval:
    if a.kld is None:
        raise LowbitError("no KL divergence in these window stats")
    return _mean(a.kld, a.tokens, kw.get("samples", BOOTSTRAP_SAMPLES), kw.get("seed", BOOTSTRAP_SEED),
                 kw.get("level", LEVEL))


def mean_top1(a: WindowStats, **kw) -> Interval:
    if a.top1 is None:
        raise LowbitError("no top-1 agreement in these window stats")
    return _mean(a.top1, a.tokens, kw.get("samples", BOOTSTRAP_SAMPLES), kw.get("seed", BOOTSTRAP_SEED),
                 kw.get("level", LEVEL))


def paired_difference(a: WindowStats, b: WindowStats, what: str = "kld", *, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> Interval:
    """a's figure minus b's on the same drawn windows: what = "kld", "top1" (per-token means) or
    "log_ppl" (mean NLL per token, i.e. the log of a's perplexity over b's). An interval that holds 0:
    the windows do not tell a and b apart."""
    _check_pair(a, b)
    if what not in ("kld", "top1", "log_ppl"):
        raise LowbitError(f"paired difference of {what!r}: use kld, top1 or log_ppl")
    field = "nll" if what == "log_ppl" else what
    va, vb = getattr(a, field), getattr(b, field)
    if va is None or vb is None:
        raise LowbitError(f"no {what} in these window stats")
    d = va - vb
    c = draws(a.n, samples, seed)
    return _interval(d.sum() / a.tokens.sum(), (c @ d) / (c @ a.tokens), level)


def binomial_interval(found: int, trials: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of a success fraction (NIAH needles found of trials)."""
    if trials < 1:
        raise LowbitError("a success fraction needs at least one trial")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = found / trials
    denom = 1 + z * z / trials
    mid = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # at p = 0 (or 1) the bound is exactly 0 (1); computed, it is off by a rounding error
    lo = 0.0 if found == 0 else max(0.0, mid - half)
    hi = 1.0 if found == trials else min(1.0, mid + half)
    return Interval(p, lo, hi, level)


def paired_trials_difference(a: list[bool], b: list[bool], *, samples: int = BOOTSTRAP_SAMPLES,
                             seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> Interval:
    """Fraction found by a minus fraction found by b over the same trials (same needles), resampling trials."""
    if len(a) != len(b) or not a:
        raise LowbitError("paired trials need the same, non-empty list of trials")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    c = draws(len(d), samples, seed)
    return _interval(d.mean(), (c @ d) / len(d), level)


def quality_intervals(stats: WindowStats, reference: WindowStats, *, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> dict[str, Interval]:
    """PPL over the reference's, mean KLD and top-1 of one evaluation, each with its interval (same draws)."""
    kw = dict(samples=samples, seed=seed, level=level)
    out = {"ppl_ratio": ppl_ratio(stats, reference, **kw)}
    if stats.kld is not None:
        out["kld"] = mean_kld(stats, **kw)
    if stats.top1 is not None:
        out["top1"] = mean_top1(stats, **kw)
    return out


def interval_fields(stats: WindowStats, reference: WindowStats, **kw) -> dict:
    """The JSON fields of a row: ppl_ratio, ppl_ratio_ci, kld_ci, top1_ci (None below MIN_WINDOWS windows), the
    windows' sums and the setup."""
    iv = quality_intervals(stats, reference, **kw)
    enough = stats.n >= MIN_WINDOWS
    out = {"ppl_ratio": iv["ppl_ratio"].value, "ppl_ratio_ci": iv["ppl_ratio"].as_list() if enough else None}
    for k in ("kld", "top1"):
        if k in iv:
            out[f"{k}_ci"] = iv[k].as_list() if enough else None
    out["windows"] = {**stats.as_dict(), "nll_reference": reference.as_dict()["nll"]}
    out["bootstrap"] = {"unit": "window", "samples": kw.get("samples", BOOTSTRAP_SAMPLES),
                        "seed": kw.get("seed", BOOTSTRAP_SEED), "level": kw.get("level", LEVEL),
                        "method": "percentile, paired with the reference"}
    return out


def row_stats(row: dict) -> tuple[WindowStats, WindowStats]:
    """(the row's window stats, its reference's) from a row written by interval_fields."""
    w = row.get("windows")
    if not isinstance(w, dict) or "nll" not in w:
        raise LowbitError(f"row {row.get('kv_k', row.get('weights', '?'))} has no per-window figures")
    return WindowStats.from_dict(w), WindowStats(np.asarray(w["nll_reference"]), np.asarray(w["tokens"]))
