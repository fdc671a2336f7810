"""The store kernels' correctness rule, shared by the CPU tests and the GPU benchmark.

A fused store must write `TurboQuant.quantize`'s bytes, except where float32 rounding order decides (the
two sides sum and rotate in different orders): each differing code must belong to a rotated value within
1e-6 of a Lloyd-Max threshold, and each differing fp16 norm must be one ulp away with the exact norm
within 1e-6 (relative) of the rounding midpoint between the two. Both checked in float64.

A non-finite block's NaN norm has no single bit pattern in torch: the CPU writes 0x7E00, NVIDIA GPUs
canonicalize NaN to 0x7FFF. The reference's NaN norms are therefore the bits torch writes on the device the
kernel wrote `got` on (`torch_nan16`): the same device as the codec in the GPU benchmark, and the CPU
codec's own bits in CI. Still exactly one accepted pattern per block.
"""

from __future__ import annotations

import torch

TIE = 1e-6
_NAN16: dict[tuple[str, bool], int] = {}


def nan16_key(device, norm_correction: bool = False) -> tuple[str, bool]:
    """The cache key of `torch_nan16`: one per physical device, so "cuda" and "cuda:0" (a tensor's device)
    share an entry (the GPU tests override the bits through this key)."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return str(d), bool(norm_correction)


def torch_nan16(device, norm_correction: bool = False) -> int:
    """The fp16 bits (as a signed int16 value) `TurboQuant.quantize` stores for a non-finite block's norm on
    `device`: the same ops (a float32 NaN, divided by ‖c‖ with norm correction, converted to fp16)."""
    key = nan16_key(device, norm_correction)
    if key not in _NAN16:
        t = torch.full((1,), float("nan"), dtype=torch.float32, device=device)
        if norm_correction:  # a GPU division may return its own canonical NaN
            t = t / torch.ones(1, dtype=torch.float32, device=device)
        _NAN16[key] = int(t.to(torch.float16).view(torch.int16).item())
    return _NAN16[key]


def _where(mask: torch.Tensor) -> str:
    first = tuple(int(i) for i in mask.nonzero()[0])
    return f"{int(mask.sum())} block(s), first at (row..., block) {first}"


def check_store(tq, x: torch.Tensor, got: torch.Tensor) -> int:
    """Assert got == reference bytes up to float32 ties; return how many ties differed (codes + norms)."""
    x = x.to(tq.device)  # on the codec's device (CPU in CI, the GPU in the benchmark)
    ref = tq.quantize(x)
    got_dev, nan16 = str(got.device), torch_nan16(got.device, tq.norm_correction)
    got = got.to(ref.device)
    assert got.shape == ref.shape and got.shape[-1] == tq.fmt.vector_bytes(tq.head_dim)
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
    ref_nan = fr["norm"].isnan()
    nr = torch.where(ref_nan, nan16, nr)  # NaN bits as torch writes them where the kernel ran
    nan_diff = ref_nan & (nr != ng)
    assert not nan_diff.any(), (
        f"NaN norm bits differ: {_where(nan_diff)}: expected 0x{nan16 & 0xFFFF:04x} (torch's NaN on "
        f"{got_dev}), got 0x{int(ng[nan_diff][0]) & 0xFFFF:04x}")
    ndiff = (nr != ng) & ~idx_diff.any(-1)
    if ndiff.any():
        far = ndiff & ((nr - ng).abs() != 1)
        if far.any():
            i = tuple(int(v) for v in far.nonzero()[0])
            raise AssertionError(
                f"fp16 norms differ by more than one ulp: {_where(far)}: ref {float(fr['norm'][i])} "
                f"(0x{int(nr[i]) & 0xFFFF:04x}), got {float(fg['norm'][i])} (0x{int(ng[i]) & 0xFFFF:04x})")
        exact = norm.squeeze(-1)
        if tq.norm_correction:
            exact = exact / st.centroids.double()[fr["idx"]].norm(dim=-1)
        mid = (fr["norm"].double() + fg["norm"].double()) / 2
        assert ((exact - mid).abs() / exact)[ndiff].max() < TIE, "norm differs away from an fp16 midpoint"
    return int(idx_diff.sum() + ndiff.sum())


def check_q8_store(params, x: torch.Tensor, got: torch.Tensor) -> int:
    """Assert the fused q8_0 store's bytes equal the torch path's (`lowbit.kernels.q8`) up to float32 ties; return
    how many values differed. A code may differ where 127·y / amax lies within `err` of a rounding midpoint; a
    scale where the block's amax / 127 lies within `err` of an fp16 midpoint (its codes may then all move by the
    scale's ulp). `err` is TIE of the value plus the error bound of a float32 dot product of n terms summed in
    any order, 2·n·2⁻²⁴·Σ|x_i·r_ij| (Higham's γ_n, doubled for tensor cores, whose accumulation truncates): the
    rounding error of a rotated value scales with the block it was summed from, not with the value itself."""
    from lowbit.kernels import q8

    ref = q8.store(params, x.to(got.device)).cpu().view(-1, 34)
    got = got.cpu().view(-1, 34)
    assert got.shape == ref.shape
    d_ref, d_got = ref[:, :2].contiguous().view(torch.float16), got[:, :2].contiguous().view(torch.float16)
    q_ref, q_got = ref[:, 2:].view(torch.int8).int(), got[:, 2:].view(torch.int8).int()
    xd = x.detach().cpu().double().reshape(-1, params.head_dim)
    if params.rot is None:
        y, sum_err = xd, torch.zeros_like(xd)
    else:
        r = params.rot.detach().cpu().double()
        xb = xd.reshape(-1, params.rot_block)
        y = (xb @ r).reshape(-1, params.head_dim)
        sum_err = (2 * params.rot_block * 2.0 ** -24 * (xb.abs() @ r.abs())).reshape(-1, params.head_dim)
    y, sum_err = y.reshape(-1, 32), sum_err.reshape(-1, 32)
    amax = y.abs().amax(-1)
    scale_diff = (d_ref != d_got).squeeze(-1)
    if scale_diff.any():
        exact = amax[scale_diff] / 127
        mid = (d_ref[scale_diff].double() + d_got[scale_diff].double()).squeeze(-1) / 2
        err = TIE + sum_err[scale_diff].amax(-1) / amax[scale_diff]
        assert ((exact - mid).abs() / exact <= err).all(), "a q8_0 scale differs away from an fp16 midpoint"
        assert ((q_ref - q_got).abs()[scale_diff] <= 1).all(), "codes of a tied scale moved by more than one step"
    code_diff = (q_ref != q_got) & ~scale_diff[:, None]
    if code_diff.any():
        per_unit = torch.where(amax > 0, 127 / amax, 0.0)[:, None]  # codes per unit of y
        v = (y * per_unit)[code_diff].abs()
        err = TIE * v.clamp_min(1) + (sum_err * per_unit)[code_diff]
        assert ((v - v.floor() - 0.5).abs() <= err).all(), "a q8_0 code differs away from a midpoint"
        assert ((q_ref - q_got).abs()[code_diff] == 1).all(), "a q8_0 code moved by more than one step"
    return int(code_diff.sum() + scale_diff.sum())
