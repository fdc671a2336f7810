"""The store kernels' correctness rule, shared by the CPU tests and the GPU benchmark.

A fused store must write `TurboQuant.quantize`'s bytes, except where float32 rounding order decides (the
two sides sum and rotate in different orders): each differing code must belong to a rotated value within
1e-6 of a Lloyd-Max threshold, and each differing fp16 norm must be one ulp away with the exact norm
within 1e-6 (relative) of the rounding midpoint between the two. Both checked in float64.
"""

from __future__ import annotations

import torch

TIE = 1e-6


def check_store(tq, x: torch.Tensor, got: torch.Tensor) -> int:
    """Assert got == reference bytes up to float32 ties; return how many ties differed (codes + norms)."""
    x = x.to(tq.device)  # on the codec's device (CPU in CI, the GPU in the benchmark)
    ref = tq.quantize(x)
    got = got.to(ref.device)
    assert got.shape == ref.shape and got.shape[-1] == tq.fmt.vector_bytes(tq.head_dim)
    if torch.equal(got, ref):
        return 0
    fr, fg = tq.unpack(ref), tq.unpack(got)
    st = tq.stages[0]
    xb = tq._blocks(x).double()
    finite = torch.isfinite(xb).all(-1, keepdim=True)
    xb = torch.where(finite, xb, 0.0)
    norm = xb.norm(dim=-1, keepdim=True)
    idx_diff = fr["idx"] != fg["idx"]
    if idx_diff.any():
        y = (xb / norm.clamp_min(1e-300)) @ st.rot.double().T  # float32 matrix, float64 arithmetic
        dist = (y[idx_diff].unsqueeze(-1) - st.thresholds.double()).abs().min(-1).values
        assert (dist < TIE).all(), f"code differs away from a threshold: {dist.max()}"
    nr, ng = fr["norm"].view(torch.int16).int(), fg["norm"].view(torch.int16).int()
    ndiff = (nr != ng) & ~idx_diff.any(-1)
    if ndiff.any():
        assert ((nr - ng).abs()[ndiff] == 1).all(), "fp16 norms differ by more than one ulp"
        exact = norm.squeeze(-1)
        if tq.norm_correction:
            exact = exact / st.centroids.double()[fr["idx"]].norm(dim=-1)
        mid = (fr["norm"].double() + fg["norm"].double()) / 2
        assert ((exact - mid).abs() / exact)[ndiff].max() < TIE, "norm differs away from an fp16 midpoint"
    return int(idx_diff.sum() + ndiff.sum())
