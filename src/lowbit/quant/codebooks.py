"""Lloyd-Max codebooks for one coordinate of a randomly rotated unit vector (TurboQuant §3.1).

After a random rotation of a unit vector in R^d, each coordinate follows the density of the paper's
Lemma 1, f(x) = Γ(d/2) / (√π Γ((d-1)/2)) (1-x²)^((d-3)/2) on [-1, 1], i.e. X = 2B - 1 with
B ~ Beta((d-1)/2, (d-1)/2); as d grows it tends to N(0, 1/d). The optimal b-bit scalar quantizer of
that density (1-D continuous k-means, the paper's Eq. 4) is found by Lloyd's iteration.

The cell integrals are closed form, so no numerical quadrature is needed:
- Beta: x·f(x; a, b) = a/(a+b)·f(x; a+1, b), so partial moments are differences of Beta CDFs;
- Gaussian: ∫φ = ΔΦ, ∫xφ = -Δφ, ∫x²φ = ΔΦ - Δ(xφ).
Converging to 1e-13 takes milliseconds, so codebooks are computed on demand and kept in an
lru_cache instead of a data file that could drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

from lowbit.errors import LowbitError

KINDS = ("beta", "gaussian")
MAX_BITS = 8


@dataclass(frozen=True)
class Codebook:
    """Sorted centroids and the decision thresholds between them, in coordinate units (not ×√d)."""

    bits: int
    dim: int
    kind: str
    centroids: tuple[float, ...]
    thresholds: tuple[float, ...]  # len = 2**bits - 1, midpoints between neighbouring centroids
    coord_mse: float  # E[(X - Q(X))²] for one coordinate

    @property
    def unit_mse(self) -> float:
        """Expected ‖x - x̃‖² for a unit vector: d times the per-coordinate MSE (proof of Thm 1)."""
        return self.dim * self.coord_mse


def _moments_beta(dim: int):
    """Partial moments (P, E[X;cell], E[X²;cell]) of the Lemma-1 density over cells given by edges."""
    a = (dim - 1) / 2.0
    d0, d1, d2 = stats.beta(a, a), stats.beta(a + 1, a), stats.beta(a + 2, a)
    m1 = a / (2 * a)  # E[B] = 1/2
    m2 = a * (a + 1) / ((2 * a) * (2 * a + 1))  # E[B²]

    def moments(edges: np.ndarray):
        u = np.clip((edges + 1.0) / 2.0, 0.0, 1.0)  # X = 2B - 1
        p = np.diff(d0.cdf(u))
        eb = m1 * np.diff(d1.cdf(u))
        eb2 = m2 * np.diff(d2.cdf(u))
        return p, 2 * eb - p, 4 * eb2 - 4 * eb + p

    return moments, 1.0 / dim  # E[X²] = 1/d exactly


def _moments_gauss(dim: int):
    s = 1.0 / np.sqrt(dim)

    def moments(edges: np.ndarray):
        z = edges / s
        cdf, pdf = stats.norm.cdf(z), stats.norm.pdf(z)
        with np.errstate(invalid="ignore"):  # ±inf · 0 at the outer edges is 0
            zpdf = np.where(np.isfinite(z), z * pdf, 0.0)
        p = np.diff(cdf)
        return p, -s * np.diff(pdf), s * s * (p - np.diff(zpdf))

    return moments, 1.0 / dim


@lru_cache(maxsize=None)
def lloyd_max(bits: int, dim: int, kind: str = "beta", tol: float = 1e-13, max_iter: int = 100_000) -> Codebook:
    """The b-bit Lloyd-Max codebook of the coordinate density at dimension `dim`.

    bits = 0 is the trivial codebook {0} (used by TurboQuant_prod at b = 1, whose MSE stage is empty).
    """
    if kind not in KINDS:
        raise LowbitError(f"codebook kind must be one of {KINDS}, got {kind!r}")
    if not 0 <= bits <= MAX_BITS:
        raise LowbitError(f"codebook bits must be 0..{MAX_BITS}, got {bits}")
    if dim < 2 or (kind == "beta" and dim < 3):
        # Lemma 1's density needs d >= 3 (at d = 2 it is the arcsine law, unbounded at ±1).
        raise LowbitError(f"codebook dimension must be >= 3, got {dim}")
    moments, second = (_moments_beta if kind == "beta" else _moments_gauss)(dim)
    lo, hi = (-1.0, 1.0) if kind == "beta" else (-np.inf, np.inf)
    n = 1 << bits
    if n == 1:
        return Codebook(0, dim, kind, (0.0,), (), second)
    # Start from equal-probability cells' conditional means; Lloyd's iteration is a descent method.
    q = np.linspace(0, 1, n + 1)[1:-1]
    t = stats.norm.ppf(q) / np.sqrt(dim) if kind == "gaussian" else np.clip(stats.norm.ppf(q) / np.sqrt(dim), -0.99, 0.99)
    for _ in range(max_iter):
        edges = np.concatenate([[lo], t, [hi]])
        p, m1, _ = moments(edges)
        c = m1 / p
        t_new = (c[1:] + c[:-1]) / 2
        if np.max(np.abs(t_new - t)) < tol:
            t = t_new
            break
        t = t_new
    edges = np.concatenate([[lo], t, [hi]])
    p, m1, m2 = moments(edges)
    c = m1 / p
    c = (c - c[::-1]) / 2  # the density is symmetric: remove round-off asymmetry
    t = (c[1:] + c[:-1]) / 2
    edges = np.concatenate([[lo], t, [hi]])
    p, m1, m2 = moments(edges)
    mse = float(np.sum(m2 - 2 * c * m1 + c * c * p))
    return Codebook(bits, dim, kind, tuple(float(v) for v in c), tuple(float(v) for v in t), mse)


def unit_mse(bits: int, dim: int | None, kind: str = "beta") -> float:
    """Exact Lloyd-Max D_mse for a unit vector; dim=None means the Gaussian limit (d·C independent of d)."""
    if dim is None:
        return lloyd_max(bits, 128, "gaussian").unit_mse
    return lloyd_max(bits, dim, kind).unit_mse


def lower_bound(bits: int) -> float:
    """Theorem 3: no quantizer does better than 4^-b on worst-case unit vectors."""
    return 4.0 ** (-bits)


def prod_variance_bound(bits: int, dim: int, kind: str = "beta") -> float:
    """Theorem 2 with exact constants: Var⟨y, x̃⟩ <= π/(2d) · ‖y‖² · D_mse(b-1), for ‖y‖ = 1."""
    return np.pi / (2 * dim) * unit_mse(bits - 1, dim, kind)
