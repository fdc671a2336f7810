"""Strong post-training 1-bit weights: GPTQ error compensation and rotated ARB binarization.

Three ideas, composable, all numpy:

* GPTQ (Frantar et al. 2022) with a 1-bit group quantizer. Columns (input features) are binarized
  one at a time and each one's error, weighted by the inverse Hessian H = E[x x^T] of the layer's
  real input activations, is pushed onto the columns not yet quantized. With the Q1_0 group
  quantizer (d = fp16 mean|w| of the group at the time it starts, value = +-d) the result is a
  plain Q1_0 tensor: 1.125 bits per weight, loadable by llama.cpp, only better chosen signs/scales.
* ARB (Li et al. 2024, "ARB-LLM", alternating refined binarization): per group of 128,
  w ~ alpha * sign(w - mu) + mu, with (alpha, mu) refitted by least squares for the current signs and
  the signs recomputed, a few rounds. Storage (`ARB_LAYOUT`): fp16 alpha, fp16 mu, 128 sign bits =
  20 bytes per 128 weights = 1.25 bits per weight. lowbit's own layout: no ggml type holds it.
* Rotation: a random-sign Walsh-Hadamard transform along each row (block = the largest power of
  two dividing the row, at most 1024) spreads outliers before binarizing, as QuIP#/Bonsai do. The
  stored tensor is binarize(W R); the model computes with binarize(W R) R^T, i.e. llama.cpp would have
  to rotate activations at run time (it does not), so rotated results are not llama.cpp files.
  Side information: an 8-byte seed per tensor, counted in the bits.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import hadamard

from lowbit.errors import LowbitError
from lowbit.formats.weights import ARB_LAYOUT
from lowbit.quant import q1_0

ARB_ROUNDS = 8  # ARB-LLM reports convergence within a handful of alternations
GPTQ_DAMP = 0.01  # fraction of mean(diag H) added to the diagonal (GPTQ's default percdamp)
ROTATION_MAX = 1024
SEED_BYTES = 8  # per rotated tensor: the seed of its random signs


# ---------------------------------------------------------------- rotation

def rotation_block(ne0: int) -> int:
    b = ne0 & -ne0  # largest power of two dividing ne0
    return min(b, ROTATION_MAX)


def _hadamard(n: int) -> np.ndarray:
    return (hadamard(n) / np.sqrt(n)).astype(np.float32)


def rotation(ne0: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(random signs [ne0], normalized Hadamard [b, b]); R = diag(signs) * blockdiag(H)."""
    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0], dtype=np.float32), size=ne0)
    return signs, _hadamard(rotation_block(ne0))


def rotate(w: np.ndarray, seed: int) -> np.ndarray:
    """w R along the rows (orthogonal, so rotate_back(rotate(w)) == w up to float error)."""
    signs, h = rotation(w.shape[-1], seed)
    b = h.shape[0]
    x = (w * signs).reshape(*w.shape[:-1], -1, b)
    return (x @ h).reshape(w.shape)


def rotate_back(w: np.ndarray, seed: int) -> np.ndarray:
    signs, h = rotation(w.shape[-1], seed)
    b = h.shape[0]
    x = w.reshape(*w.shape[:-1], -1, b) @ h.T
    return x.reshape(w.shape) * signs


def rotate_hessian(hessian: np.ndarray, seed: int) -> np.ndarray:
    """R^T H R: the Hessian of the rotated problem (x R is the rotated input)."""
    r = rotate(np.eye(hessian.shape[0], dtype=np.float32), seed)  # rows of I times R = R
    return r.T @ hessian @ r


# ---------------------------------------------------------------- group quantizers

def arb_fit(g: np.ndarray, rounds: int = ARB_ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """ARB for groups g [n, k] -> fp16-representable (alpha [n], mu [n])."""
    g = g.astype(np.float64)
    mu = g.mean(axis=1)
    for _ in range(rounds):
        b = np.where(g >= mu[:, None], 1.0, -1.0)
        bm = b.mean(axis=1)
        denom = np.maximum(1.0 - bm * bm, 1e-12)
        # least squares for (alpha, mu) given signs b: alpha = cov(g, b) / var(b), mu = mean(g) - alpha mean(b)
        alpha = ((g * b).mean(axis=1) - g.mean(axis=1) * bm) / denom
        alpha = np.abs(alpha)
        mu = g.mean(axis=1) - alpha * bm
        all_same = np.abs(bm) == 1.0  # every sign equal: alpha is free; put the group's mean in mu
        alpha = np.where(all_same, 0.0, alpha)
        mu = np.where(all_same, g.mean(axis=1), mu)
    return alpha.astype(np.float16), mu.astype(np.float16)


def arb_values(g: np.ndarray, alpha: np.ndarray, mu: np.ndarray) -> np.ndarray:
    a, m = alpha.astype(np.float32)[:, None], mu.astype(np.float32)[:, None]
    return np.where(g >= m, m + a, m - a)


def _groups(ne0: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, ne0)) for s in range(0, ne0, block)]


def arb_pack(groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Pack per-group (alpha [rows], mu [rows], signs [rows, k]) into ARB1 rows, in ARB_LAYOUT order."""
    parts = []
    for alpha, mu, signs in groups:
        parts += [alpha.astype("<f2").view(np.uint8).reshape(-1, 2), mu.astype("<f2").view(np.uint8).reshape(-1, 2),
                  np.packbits(signs, axis=-1, bitorder="little")]
    return np.concatenate(parts, axis=1)


def arb_unpack(data: np.ndarray, ne0: int) -> np.ndarray:
    """ARB1 rows [rows, row_bytes] -> float32 values [rows, ne0]."""
    out, pos = [], 0
    for s, e in _groups(ne0, ARB_LAYOUT.block):
        k = e - s
        side = {}
        for name in ARB_LAYOUT.fp16_fields:  # the layout's order: alpha, then mu
            side[name] = np.ascontiguousarray(data[:, pos : pos + 2]).view("<f2")[:, 0].astype(np.float32)
            pos += 2
        alpha, mu = side["alpha"], side["mu"]
        nb = -(-k // 8)
        bits = np.unpackbits(data[:, pos : pos + nb], axis=-1, bitorder="little")[:, :k].astype(bool)
        out.append(np.where(bits, (mu + alpha)[:, None], (mu - alpha)[:, None]))
        pos += nb
    return np.concatenate(out, axis=1).astype(np.float32)


def arb(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ARB binarization of w [rows, ne0] (groups of 128 along rows) -> (values, ARB1 bytes)."""
    values = np.empty(w.shape, dtype=np.float32)
    groups = []
    for s, e in _groups(w.shape[-1], ARB_LAYOUT.block):
        g = w[:, s:e]
        alpha, mu = arb_fit(g)
        values[:, s:e] = arb_values(g, alpha, mu)
        groups.append((alpha, mu, g >= mu.astype(np.float32)[:, None]))
    return values, arb_pack(groups)


# ---------------------------------------------------------------- GPTQ

def _inverse_hessian_chol(hessian: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor of H^-1 (GPTQ), with dead inputs zeroed and damping."""
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w = w.copy()
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += GPTQ_DAMP * np.mean(np.diag(h))
    try:
        l = np.linalg.cholesky(h)
    except np.linalg.LinAlgError as e:
        raise LowbitError(f"calibration Hessian is not positive definite ({e})") from None
    hinv = np.linalg.inv(l).T @ np.linalg.inv(l)  # H^-1
    return np.linalg.cholesky(hinv).T, w  # upper factor U with U^T U = H^-1


def gptq(w: np.ndarray, hessian: np.ndarray, quantizer: str = "q1_0") -> tuple[np.ndarray, np.ndarray]:
    """GPTQ with a 1-bit group quantizer over groups of 128 columns -> (values, packed bytes).

    quantizer "q1_0": the bytes are a Q1_0 tensor [rows, ne0/128*18] (llama.cpp-loadable);
    quantizer "arb": the bytes are lowbit's ARB1 layout.
    """
    rows, ne0 = w.shape
    if hessian.shape != (ne0, ne0):
        raise LowbitError(f"Hessian shape {hessian.shape} does not match rows of {ne0} values")
    if quantizer == "q1_0" and ne0 % q1_0.BLOCK:
        raise LowbitError(f"Q1_0 needs rows whose length divides by {q1_0.BLOCK}; these have {ne0}")
    u, w = _inverse_hessian_chol(hessian, np.asarray(w, dtype=np.float32))
    w = w.astype(np.float64)
    q = np.zeros_like(w)
    packed = []
    for s, e in _groups(ne0, 128):
        w1 = w[:, s:e].copy()
        err = np.zeros_like(w1)
        u1 = u[s:e, s:e]
        if quantizer == "q1_0":
            d = q1_0.block_scales(w1.astype(np.float32)).astype(np.float64)  # what the ref would store
            signs = np.zeros(w1.shape, dtype=bool)
        else:
            alpha, mu = arb_fit(w1)
            a, m = alpha.astype(np.float64), mu.astype(np.float64)
        for i in range(e - s):
            col = w1[:, i]
            if quantizer == "q1_0":
                signs[:, i] = col >= 0
                qc = np.where(signs[:, i], d, -d)
            else:
                qc = np.where(col >= m, m + a, m - a)
            q[:, s + i] = qc
            e_i = (col - qc) / u1[i, i]
            w1[:, i:] -= np.outer(e_i, u1[i, i:])
            err[:, i] = e_i
        w[:, e:] -= err @ u[s:e, e:]
        if quantizer == "q1_0":
            packed.append(q1_0.pack(d.astype("<f2"), signs))
        else:
            packed.append((alpha, mu, q[:, s:e] >= m[:, None]))
    values = q.astype(np.float32)
    if quantizer == "q1_0":
        # packed[g] holds group g of every row; interleave back to row-major block order
        return values, np.stack(packed, axis=1).reshape(rows, ne0 // q1_0.BLOCK * q1_0.Q1_0.block_bytes)
    return values, arb_pack(packed)
