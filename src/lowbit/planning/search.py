"""Bisection over a monotone predicate: the inverse solves (largest context, most users, layers to offload)."""

from __future__ import annotations

from collections.abc import Callable


def largest(pred: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Largest x in [lo, hi] with pred(x), for pred true up to some point and false after; None if pred(lo) fails."""
    if not pred(lo):
        return None
    if pred(hi):
        return hi
    while hi - lo > 1:  # pred(lo) and not pred(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if pred(mid) else (lo, mid)
    return lo


def smallest(pred: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest x in [lo, hi] with pred(x), for pred false up to some point and true after (pred(hi) holds)."""
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid + 1, hi)
    return lo
