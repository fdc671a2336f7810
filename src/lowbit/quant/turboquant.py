"""TurboQuant (Zandieh et al., arXiv 2504.19874) for cached head vectors, in torch (CPU or CUDA).

A head vector of `head_dim` values is cut into blocks (`KVFormat.block_values`: 128, or the vector
when shorter); a head_dim that is not a multiple of the block is zero-padded, which keeps the
rotation a power-of-two Hadamard (zeros cost bytes, not accuracy). Each block is quantized alone:

- mse (Alg. 1): u = x/‖x‖, y = Π u, idx_j = nearest Lloyd-Max centroid; stores idx and ‖x‖ (fp16).
  With norm correction (vLLM's "_nc") the stored norm is ‖x‖/‖c[idx]‖, so the decoded vector has
  exactly the input's norm.
- prod (Alg. 2): a (b-1)-bit mse stage, then 1-bit QJL signs sign(S r) of the residual r = y - c[idx]
  with S dense N(0,1), plus γ = ‖r‖ (fp16). Decoding adds √(π/2)/d · γ · Sᵀ signs, which makes inner
  products unbiased. The residual is taken in the rotated frame; S·Π is again i.i.d. Gaussian, so
  this is Alg. 2 with S' = SΠ. Norm correction is never applied here (it would reintroduce bias).
- outlier split (§4.3, for turbo2.5/turbo3.5): our reading follows the authors' released code and the
  RaBitQ re-run: a fixed set of 32 channels per 128 (per layer and KV head, the largest L2 norm over
  the calibration tokens, i.e. the prefill) gets b+1 bits, the other 96 get b bits; the two sub-vectors
  are normalized separately (two fp16 norms) and rotated by their own dense QR rotations (96 is not
  a power of two), with codebooks for their own dimensions (32 and 96, not 128 as in that code).
  The channel list is per-head metadata, not per-vector storage.

Non-finite input: a block holding NaN or ±Inf is stored with a NaN norm and decodes to NaN, so an
overflow upstream is never turned into a plausible finite vector. A zero block decodes to zeros.
Norms above fp16's 65504 saturate to inf, as in every fp16-norm implementation.

Bytes come from `lowbit.formats.kv`: `TurboLayout.fields(block)` gives the fields and bit counts in
storage order, and a packed vector is its blocks back to back, `KVFormat.vector_bytes(head_dim)` long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError
from lowbit.formats.kv import TURBO_BLOCK, KVFormat, KVSpec, TurboKV, TurboLayout, kv_format
from lowbit.quant.codebooks import lloyd_max
from lowbit.quant.kv_codec import KVCodec
from lowbit.quant.packing import bytes_to_fp16, fp16_to_bytes, pack_bits, split_fields, unpack_bits
from lowbit.quant.rotation import gaussian_matrix, rotation

_NORM_FIELDS = ("norm", "gamma", "outlier_norm", "regular_norm")


@dataclass(frozen=True)
class _Stage:
    """One Lloyd-Max stage on vectors of `dim` values: rotation matrix, centroids, thresholds."""

    dim: int
    bits: int
    rot: torch.Tensor  # [dim, dim], rotate with y = u @ rot.T
    centroids: torch.Tensor
    thresholds: torch.Tensor

    def codes(self, y: torch.Tensor) -> torch.Tensor:
        if self.bits == 0:
            return torch.zeros(y.shape, dtype=torch.int64, device=y.device)
        return torch.bucketize(y.contiguous(), self.thresholds)


def _stage(dim: int, bits: int, rot_kind: str, codebook: str, seed: int, device) -> _Stage:
    if dim < 3:
        raise LowbitError(f"TurboQuant needs at least 3 values per rotated block, got {dim}")
    cb = lloyd_max(bits, dim, codebook)
    return _Stage(
        dim,
        bits,
        rotation(rot_kind, dim, seed, device=device),
        torch.tensor(cb.centroids, dtype=torch.float32, device=device),
        torch.tensor(cb.thresholds, dtype=torch.float32, device=device),
    )


def _normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors and norms along the last dim; zero vectors stay zero, non-finite blocks get NaN norms."""
    finite = torch.isfinite(x).all(-1, keepdim=True)
    x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    u = x / norm.clamp_min(torch.finfo(x.dtype).tiny)
    norm = torch.where(finite, norm, torch.full((), float("nan"), device=x.device))
    return u, norm.squeeze(-1)


class TurboQuant(KVCodec, kind="turbo"):
    """Quantizer for one KV-cache format and head_dim; `quantize` -> packed uint8, `dequantize` -> float32.

    `encode`/`decode` work on unpacked fields (dict of code and norm tensors, float norms), which is what
    the distortion check uses; `pack`/`unpack` are exact and bit-for-bit reversible.
    """

    def __init__(
        self,
        fmt: KVFormat | TurboLayout | str,
        head_dim: int,
        *,
        rotation_kind: str = "hadamard",
        codebook: str = "beta",
        norm_correction: bool = False,
        seed: int = 0,
        device="cpu",
        block: int | None = None,
        center: bool = False,
    ):
        if isinstance(fmt, TurboLayout):  # an ad-hoc setting, e.g. b = 1 for the distortion check
            fmt = TurboKV(name=f"turbo{fmt.bits}{'-prod' if fmt.qjl else ''}", description="ad hoc", source="",
                          turbo=fmt)
        fmt = kv_format(fmt) if isinstance(fmt, str) else fmt
        if not isinstance(fmt, TurboKV):
            raise LowbitError(f"{fmt.name} is not a TurboQuant format")
        if head_dim <= 0:
            raise LowbitError(f"head_dim must be positive, got {head_dim}")
        self.fmt, self.layout, self.head_dim = fmt, fmt.turbo, head_dim
        # `block` overrides the format's block (research use: the distortion check rotates whole vectors).
        self.block = block or fmt.block_values(head_dim)
        self.n_blocks = math.ceil(head_dim / self.block)
        self.vector_bytes = self.n_blocks * fmt.turbo.block_bytes(self.block)
        if block is None:
            assert self.vector_bytes == fmt.vector_bytes(head_dim)
        self.norm_correction = norm_correction and not self.layout.qjl
        # center (lowbit's addition, not in the paper): subtract a per-channel mean calibrated on the first
        # tokens (per KV head in the cache) before quantizing, add it back after. Keys of small models carry
        # a large common offset (62% of SmolLM2's key energy) that TurboQuant's per-vector norm spends bits on.
        self.center = center
        self.mean: torch.Tensor | None = None
        self.spec = KVSpec.of(fmt, rotation=rotation_kind, codebook=codebook,
                              norm_correction=self.norm_correction, center=center)
        self.device = torch.device(device)
        lay, blk = self.layout, self.block
        if lay.outlier_channels:
            self.n_out = lay.outlier_channels * blk // TURBO_BLOCK
            self.stages = (
                _stage(self.n_out, lay.bits + 1, "qr", codebook, seed + 1, device),
                _stage(blk - self.n_out, lay.bits, "qr", codebook, seed + 2, device),
            )
            self.outliers: torch.Tensor | None = None  # [..., n_blocks, n_out] channel ids, set by calibrate
        else:
            self.stages = (_stage(blk, lay.bits - 1 if lay.qjl else lay.bits, rotation_kind, codebook, seed, device),)
        if lay.qjl:
            self.S = gaussian_matrix(blk, seed + 1_000_003, device=device)
        # Code fields and their bits per code, checked against the layout so the packer can't drift.
        counts = {"idx": blk, "qjl_signs": blk, "outlier_idx": getattr(self, "n_out", 0),
                  "regular_idx": blk - getattr(self, "n_out", 0)}
        self.fields = lay.fields(blk)
        self.field_bytes = [math.ceil(bits / 8) for _, bits in self.fields]
        self.code_bits: dict[str, int] = {}
        for name, bits in self.fields:
            if name in _NORM_FIELDS:
                assert bits == 16, (name, bits)
                continue
            assert bits % counts[name] == 0, (name, bits, counts[name])
            self.code_bits[name] = bits // counts[name]
        assert self.n_blocks * sum(self.field_bytes) == self.vector_bytes

    @classmethod
    def from_spec(cls, spec: KVSpec, head_dim: int, *, seed: int = 0, device="cpu", keys: bool = False) -> "TurboQuant":
        return cls(spec.fmt, head_dim, rotation_kind=spec["rotation"], codebook=spec["codebook"],
                   norm_correction=spec["norm_correction"], seed=seed, device=device, center=spec["center"])

    # -- blocks -----------------------------------------------------------------------------------
    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.head_dim:
            raise LowbitError(f"expected head vectors of {self.head_dim} values, got {x.shape[-1]}")
        x = x.to(device=self.device, dtype=torch.float32)
        pad = self.n_blocks * self.block - self.head_dim
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        return x.reshape(*x.shape[:-1], self.n_blocks, self.block)

    def _unblocks(self, xb: torch.Tensor) -> torch.Tensor:
        return xb.reshape(*xb.shape[:-2], self.n_blocks * self.block)[..., : self.head_dim]

    # -- outlier channels -------------------------------------------------------------------------
    @property
    def needs_calibration(self) -> bool:
        return (self.center and self.mean is None) or (bool(self.layout.outlier_channels) and self.outliers is None)

    def calibrate(self, x: torch.Tensor, keep_dims: tuple[int, ...] = ()):
        """Per-channel mean (with center) and outlier channels (with the split), pooled over all leading
        dims of x except `keep_dims` (e.g. keep the KV-head dim). Outliers: per block, the n_out channels
        with the largest L2 norm (after centering). Stores and returns the outlier ids (None without split)."""
        if not (self.layout.outlier_channels or self.center):
            raise LowbitError(f"{self.fmt.name} has nothing to calibrate (no outlier split, no centering)")
        lead = x.dim() - 1
        keep = {d % lead for d in keep_dims} if lead else set()
        pool = [d for d in range(lead) if d not in keep]
        if self.center:
            xf = torch.nan_to_num(x.to(self.device, torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
            self.mean = xf.mean(dim=pool, keepdim=True) if pool else xf
            x = x.to(self.device, torch.float32) - self.mean
        if not self.layout.outlier_channels:
            return None
        xb = torch.nan_to_num(self._blocks(x), nan=0.0, posinf=0.0, neginf=0.0)
        energy = (xb * xb).sum(dim=pool, keepdim=True) if pool else xb * xb
        self.outliers = energy.topk(self.n_out, dim=-1).indices.sort(-1).values
        return self.outliers

    def _permutation(self, lead_shape: torch.Size) -> torch.Tensor:
        """[..., n_blocks, block] channel order: outliers first, then the regular channels, both ascending."""
        if self.outliers is None:
            raise LowbitError(f"{self.fmt.name}: call calibrate() to choose the outlier channels first")
        out = self.outliers.expand(*lead_shape, self.n_blocks, self.n_out)
        is_out = torch.zeros(*out.shape[:-1], self.block, dtype=torch.bool, device=out.device)
        is_out.scatter_(-1, out, True)
        # Stable sort of the flag puts outliers (True -> 0) first, each group in channel order.
        return torch.sort((~is_out).to(torch.int8), dim=-1, stable=True).indices

    # -- encode / decode (unpacked) ---------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.center:
            if self.mean is None:
                raise LowbitError(f"{self.fmt.name}: call calibrate() to set the channel means first")
            x = x.to(self.device, torch.float32) - self.mean
        xb = self._blocks(x)
        if self.layout.outlier_channels:
            perm = self._permutation(xb.shape[:-2])
            xp = torch.gather(xb, -1, perm)
            bad = ~torch.isfinite(xb).all(-1)  # the whole block decodes to NaN, not just one part
            f = {}
            for part, st, sub in (("outlier", self.stages[0], xp[..., : self.n_out]),
                                  ("regular", self.stages[1], xp[..., self.n_out:])):
                idx, norm = self._mse(st, sub)
                f[f"{part}_idx"], f[f"{part}_norm"] = idx, norm.masked_fill(bad, float("nan"))
            return f
        st = self.stages[0]
        if not self.layout.qjl:
            idx, norm = self._mse(st, xb)
            return {"idx": idx, "norm": norm}
        u, norm = _normalize(xb)
        y = u @ st.rot.T
        idx = st.codes(y)
        r = y - st.centroids[idx]
        gamma = torch.linalg.vector_norm(r, dim=-1)
        signs = (r @ self.S.T >= 0).to(torch.int64)
        return {"idx": idx, "qjl_signs": signs, "norm": norm, "gamma": gamma}

    def _mse(self, st: _Stage, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, norm = _normalize(xb)
        idx = st.codes(u @ st.rot.T)
        if self.norm_correction:
            cn = torch.linalg.vector_norm(st.centroids[idx], dim=-1)
            norm = norm / cn.clamp_min(torch.finfo(torch.float32).tiny)
        return idx, norm

    def decode(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.layout.outlier_channels:
            o, r = self.stages
            parts = [f["outlier_norm"].unsqueeze(-1).float() * (o.centroids[f["outlier_idx"]] @ o.rot),
                     f["regular_norm"].unsqueeze(-1).float() * (r.centroids[f["regular_idx"]] @ r.rot)]
            xp = torch.cat(parts, dim=-1)
            perm = self._permutation(xp.shape[:-2])
            xb = torch.empty_like(xp).scatter_(-1, perm, xp)
            return self._uncenter(self._unblocks(xb))
        st = self.stages[0]
        y = st.centroids[f["idx"]]
        if self.layout.qjl:
            z = f["qjl_signs"].to(torch.float32) * 2 - 1
            y = y + (math.sqrt(math.pi / 2) / self.block) * f["gamma"].unsqueeze(-1).float() * (z @ self.S)
        return self._uncenter(self._unblocks(f["norm"].unsqueeze(-1).float() * (y @ st.rot)))

    def _uncenter(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mean if self.center else x

    # -- packed bytes -----------------------------------------------------------------------------
    def pack(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fields -> uint8 [..., vector_bytes], in `TurboLayout.fields` order inside each block."""
        out = []
        for name, bits in self.fields:
            if name in _NORM_FIELDS:
                out.append(fp16_to_bytes(f[name]))
            elif bits:
                out.append(pack_bits(f[name], self.code_bits[name]))
        blocks = torch.cat(out, dim=-1)  # [..., n_blocks, block_bytes]
        return blocks.reshape(*blocks.shape[:-2], self.vector_bytes)

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        if packed.dtype != torch.uint8 or packed.shape[-1] != self.vector_bytes:
            raise LowbitError(f"{self.fmt.name}: expected uint8 [..., {self.vector_bytes}], got "
                              f"{packed.dtype} {tuple(packed.shape)}")
        blocks = packed.reshape(*packed.shape[:-1], self.n_blocks, -1)
        nonzero = [(n, b, s) for (n, b), s in zip(self.fields, self.field_bytes) if s]
        parts = split_fields(blocks, [s for _, _, s in nonzero])
        f = {}
        for (name, bits, _), part in zip(nonzero, parts):
            if name in _NORM_FIELDS:
                f[name] = bytes_to_fp16(part)
            else:
                cb = self.code_bits[name]
                f[name] = unpack_bits(part, cb, bits // cb)
        if "idx" in self.code_bits and self.fields[0][1] == 0:  # 0-bit MSE stage (prod at b = 1)
            f["idx"] = torch.zeros(*blocks.shape[:-1], self.block, dtype=torch.int64, device=packed.device)
        return f

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encode(x)
        for k in _NORM_FIELDS:
            if k in f:
                f[k] = f[k].to(torch.float16)
        return self.pack(f)

    def dequantize(self, packed: torch.Tensor) -> torch.Tensor:
        return self.decode(self.unpack(packed))

