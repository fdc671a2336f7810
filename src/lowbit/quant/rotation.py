"""Rotations of R^d: seeded dense QR (the paper's Π) and randomized Hadamard (TurboQuant), and llama.cpp's
fixed normalized Hadamard (`llamacpp_hadamard`, its KV-cache rotation: no signs, no seed).

Both are returned as an explicit orthogonal d×d matrix R, applied as y = x @ R.T (rotate) and
x = y @ R (inverse). At the head sizes of a KV cache (d <= 256) one small GEMM is faster on CPU than
a butterfly, and a GPU kernel can use the same matrix or the fast Walsh–Hadamard transform; `signs`
and `d` define the Hadamard rotation completely.

Matrices are drawn on the CPU from a torch.Generator, so a seed gives bit-identical rotations on
every device.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from lowbit.errors import LowbitError

KINDS = ("hadamard", "qr")


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def dense_qr(d: int, seed: int) -> torch.Tensor:
    """Haar-distributed orthogonal matrix: QR of an i.i.d. N(0,1) matrix, with R's diagonal signs folded
    into Q (without that fix the distribution is not uniform on O(d))."""
    a = torch.randn(d, d, generator=_generator(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


def sylvester_hadamard(d: int) -> torch.Tensor:
    if d < 1 or d & (d - 1):
        raise LowbitError(f"a Hadamard rotation needs a power-of-two size, got {d}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(d: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2, (d,), generator=_generator(seed), dtype=torch.int64).to(torch.float64) * 2 - 1


def randomized_hadamard(d: int, seed: int) -> torch.Tensor:
    """R = H · diag(s) / √d: flip signs at random, then a normalized Walsh–Hadamard transform."""
    return sylvester_hadamard(d) * random_signs(d, seed) / d**0.5


@lru_cache(maxsize=16)
def _llamacpp_hadamard64(n: int) -> torch.Tensor:
    return sylvester_hadamard(n) / n**0.5


def llamacpp_hadamard(n: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """llama.cpp's ggml_gen_hadamard: H[i][j] = (-1)^popcount(i & j) / sqrt(n), symmetric and its own inverse."""
    return _llamacpp_hadamard64(int(n)).to(dtype=dtype, device=device)


@lru_cache(maxsize=256)
def _rotation64(kind: str, d: int, seed: int) -> torch.Tensor:
    if kind == "qr":
        return dense_qr(d, seed)
    if kind == "hadamard":
        return randomized_hadamard(d, seed)
    raise LowbitError(f"rotation must be one of {KINDS}, got {kind!r}")


def rotation(kind: str, d: int, seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The seeded d×d orthogonal matrix of the given kind (cached per (kind, d, seed))."""
    return _rotation64(kind, int(d), int(seed)).to(dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _gaussian64(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, d, generator=_generator(seed), dtype=torch.float64)


def gaussian_matrix(d: int, seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """S with i.i.d. N(0,1) entries: the QJL projection of TurboQuant_prod (dense, never Hadamard)."""
    return _gaussian64(int(d), int(seed)).to(dtype=dtype, device=device)
