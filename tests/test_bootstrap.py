"""lowbit.eval.bootstrap: intervals that match known answers, are deterministic under a seed, and are paired."""

import math
from statistics import NormalDist

import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.eval import bootstrap as bs

Z = NormalDist().inv_cdf(0.975)


def _stats(kld, tokens=None, nll=None, top1=None):
    kld = np.asarray(kld, dtype=float)
    tokens = np.ones_like(kld) if tokens is None else np.asarray(tokens, dtype=float)
    return bs.WindowStats(np.zeros_like(kld) if nll is None else np.asarray(nll, dtype=float), tokens, kld,
                          None if top1 is None else np.asarray(top1, dtype=float))


def test_mean_interval_matches_the_normal_theory_interval_on_a_large_sample():
    """For a mean of many i.i.d. windows the bootstrap distribution is normal with the plug-in standard error
    s/sqrt(n) (s with divisor n): the percentile interval must be mean +- 1.96 s/sqrt(n), to bootstrap noise."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.05, 0.02, size=1000)
    iv = bs.mean_kld(_stats(x), samples=20000)
    half = Z * x.std() / math.sqrt(len(x))
    assert iv.value == pytest.approx(x.mean(), rel=1e-12)
    assert iv.lo == pytest.approx(x.mean() - half, abs=0.05 * half)
    assert iv.hi == pytest.approx(x.mean() + half, abs=0.05 * half)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    """Coverage over 400 independent data sets of 64 windows (a known population mean of 1.0)."""
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(400):
        x = rng.normal(1.0, 0.3, size=64)
        hits += bs.mean_kld(_stats(x), samples=1000).contains(1.0)
    # binomial standard error of the coverage at 400 draws is 0.011
    assert 0.91 <= hits / 400 <= 0.985


def test_weighted_mean_uses_token_counts():
    """Per-token means: windows with more scored tokens weigh more (a ratio of sums, not a mean of ratios)."""
    iv = bs.mean_kld(_stats([1.0, 9.0], tokens=[1, 3]))
    assert iv.value == pytest.approx(10 / 4)


def test_ppl_ratio_of_a_constant_per_token_shift_is_exact_with_no_width():
    """nll_a = nll_ref + c per token in every window: the ratio is exp(c) in every draw."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(200, 300, size=50).astype(float)
    ref = rng.normal(2.5, 0.5, size=50) * tokens
    a = ref + 0.07 * tokens
    iv = bs.ppl_ratio(bs.WindowStats(a, tokens), bs.WindowStats(ref, tokens))
    assert iv.value == pytest.approx(math.exp(0.07), rel=1e-12)
    assert iv.lo == pytest.approx(math.exp(0.07), rel=1e-12) and iv.hi == pytest.approx(math.exp(0.07), rel=1e-12)


def test_ppl_ratio_interval_matches_the_delta_method():
    """Per-window NLL differences d_i (equal token counts): log ratio = mean(d)/tokens, normal for many windows."""
    rng = np.random.default_rng(4)
    n, t = 800, 255.0
    ref = rng.normal(2.5, 0.4, size=n) * t
    d = rng.normal(0.02, 0.01, size=n) * t
    iv = bs.ppl_ratio(bs.WindowStats(ref + d, np.full(n, t)), bs.WindowStats(ref, np.full(n, t)), samples=20000)
    m, se = d.mean() / t, d.std() / t / math.sqrt(n)
    assert iv.value == pytest.approx(math.exp(m))
    assert math.log(iv.lo) == pytest.approx(m - Z * se, abs=0.05 * Z * se)
    assert math.log(iv.hi) == pytest.approx(m + Z * se, abs=0.05 * Z * se)


def test_same_seed_same_interval_other_seed_other_draws():
    rng = np.random.default_rng(5)
    s = _stats(rng.exponential(0.1, size=64))
    a, b = bs.mean_kld(s, seed=7), bs.mean_kld(s, seed=7)
    c = bs.mean_kld(s, seed=8)
    assert (a.lo, a.hi) == (b.lo, b.hi)
    assert (a.lo, a.hi) != (c.lo, c.hi)
    assert a.value == c.value  # the point estimate uses every window, whatever the seed
    assert abs(a.lo - c.lo) < 0.2 * (a.hi - a.lo)  # other draws, the same interval up to bootstrap noise


def test_pairing_tells_apart_what_separate_intervals_cannot():
    """Windows differ a lot in difficulty (shared by both formats); format a adds 0.01 per token everywhere.
    Each format's own interval is wide and they overlap; the paired difference is tight around 0.01."""
    rng = np.random.default_rng(6)
    base = rng.exponential(0.5, size=64)
    a = _stats(base + 0.01 + rng.normal(0, 0.001, size=64))
    b = _stats(base)
    ia, ib = bs.mean_kld(a), bs.mean_kld(b)
    assert ia.lo < ib.hi and ib.lo < ia.hi  # separately: not told apart
    d = bs.paired_difference(a, b, "kld")
    assert 0 < d.lo and d.contains(0.01) and d.hi - d.lo < 0.002
    # the same data with window order scrambled for one format is no longer paired: the difference is wide
    unpaired = bs.paired_difference(_stats(np.asarray(a.kld)[rng.permutation(64)]), b, "kld")
    assert unpaired.hi - unpaired.lo > 10 * (d.hi - d.lo)


def test_paired_difference_of_identical_rows_is_zero_and_holds_zero():
    rng = np.random.default_rng(7)
    a = _stats(rng.exponential(0.1, size=32), nll=rng.normal(600, 50, size=32), top1=np.full(32, 0.9))
    for what in ("kld", "log_ppl", "top1"):
        d = bs.paired_difference(a, a, what)
        assert d.value == d.lo == d.hi == 0.0 and d.contains(0.0)


def test_paired_statistics_refuse_other_windows():
    a = _stats([0.1, 0.2, 0.3])
    with pytest.raises(LowbitError, match="same windows"):
        bs.paired_difference(a, _stats([0.1, 0.2]), "kld")
    with pytest.raises(LowbitError, match="same windows"):
        bs.ppl_ratio(a, _stats([0.1, 0.2, 0.3], tokens=[1, 1, 2]))
    with pytest.raises(LowbitError, match="use kld"):
        bs.paired_difference(a, a, "ppl")
    with pytest.raises(LowbitError, match="entries"):
        bs.WindowStats(np.zeros(3), np.ones(2))


def test_wilson_interval_known_values():
    """Wilson 95% for 7 of 10 is [0.3968, 0.8922]; 0 of 10 starts at 0 and 10 of 10 ends at 1."""
    iv = bs.binomial_interval(7, 10)
    assert iv.value == 0.7 and iv.lo == pytest.approx(0.3968, abs=1e-4) and iv.hi == pytest.approx(0.8922, abs=1e-4)
    assert bs.binomial_interval(0, 10).lo == 0.0 and bs.binomial_interval(10, 10).hi == 1.0
    assert bs.binomial_interval(0, 10).hi == pytest.approx(0.2775, abs=1e-4)


def test_paired_trials_difference():
    a = [True] * 10
    b = [True] * 5 + [False] * 5
    d = bs.paired_trials_difference(a, b)
    assert d.value == 0.5 and d.lo > 0
    same = bs.paired_trials_difference(b, b)
    assert same.lo == same.hi == 0.0


def test_window_stats_round_trip_through_json_fields():
    rng = np.random.default_rng(8)
    s = bs.WindowStats(rng.normal(600, 30, 8), np.full(8, 255), rng.exponential(1, 8), rng.integers(200, 255, 8))
    ref = bs.WindowStats(rng.normal(600, 30, 8), np.full(8, 255))
    fields = bs.interval_fields(s, ref)
    back, back_ref = bs.row_stats(fields)
    assert np.allclose(back.nll, s.nll, rtol=1e-6) and np.array_equal(back.tokens, s.tokens)
    assert np.allclose(back.kld, s.kld, rtol=1e-6) and np.array_equal(back.top1, s.top1)
    assert np.allclose(back_ref.nll, ref.nll, rtol=1e-6)
    lo, hi = fields["ppl_ratio_ci"]
    assert lo <= fields["ppl_ratio"] <= hi
    assert fields["kld_ci"][0] <= float(s.kld.sum() / s.tokens.sum()) <= fields["kld_ci"][1]


def test_too_few_windows_give_no_interval():
    """One window: every draw is that window, a zero-width interval that would claim certainty. None instead."""
    few = bs.WindowStats(np.array([600.0, 610.0, 590.0]), np.full(3, 255), np.array([1.0, 2.0, 3.0]), np.full(3, 200))
    ref = bs.WindowStats(np.array([590.0, 600.0, 585.0]), np.full(3, 255))
    f = bs.interval_fields(few, ref)
    assert bs.MIN_WINDOWS > 3 and f["ppl_ratio_ci"] is None and f["kld_ci"] is None and f["top1_ci"] is None
    assert f["ppl_ratio"] == pytest.approx(math.exp((few.nll - ref.nll).sum() / 765)) and len(f["windows"]["nll"]) == 3
