"""The documented ranges of the numbers lowbit takes from a command line, checked where they are used,
before any work: one LowbitError line for a value outside them, whatever its size or type.

The planner's own ranges (context 1 to 2^27 tokens, 1 to 2^16 sequences or users) live with it in
lowbit.planning.planner; device memory (up to 1 PiB) in lowbit.devices. docs/reliability.md lists them all.
"""

from __future__ import annotations

import math

from lowbit.errors import LowbitError

SEED = (0, 2**32 - 1)  # seeds are offset per draw and layer; 32 bits keeps every derived seed valid for torch
DISTORTION_DIM = (3, 4096)  # vector dimension d of `eval distortion` (a d x d rotation per draw)
DISTORTION_SAMPLES = (100, 1_000_000)  # unit vectors per bit width
EVAL_TOKENS = (4, 1 << 20)  # evaluation tokens (the corpus has fewer; the tokenizer decides how many)
EVAL_CONTEXT = (4, 1 << 17)  # window length of `eval kv` / `eval weights`
EVAL_CHUNK = (1, 1 << 16)  # tokens per forward after the prefill
KV_BOUNDARY = (0, 4096)  # layers kept in f16 at each end
NIAH_LENGTH = (1, 1 << 17)  # NIAH prompt length in tokens
NIAH_DEPTH = (0.0, 1.0)  # where the needle sits, as a fraction of the prompt
NIAH_REPEATS = (1, 1000)  # needles (other passphrases and haystacks) per length and depth
MAX_LIST = 64  # items in a comma list (NIAH lengths or depths)
CALIB_TOKENS = (1, 1 << 20)  # calibration tokens for GPTQ
HEAD_DIM = (1, 65536)  # `formats --head-dim`


def whole(value: object, name: str, bounds: tuple[int, int]) -> int:
    """`value` if it is an int inside `bounds` (inclusive), else one line naming the range."""
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        shown = value if isinstance(value, int) and len(str(value)) <= 30 else f"{str(value)[:30]}..."
        raise LowbitError(f"{name} must be a whole number from {lo:,} to {hi:,}, got {shown}")
    return value


def fraction(value: object, name: str, bounds: tuple[float, float]) -> float:
    """`value` if it is a finite number inside `bounds` (inclusive), else one line."""
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise LowbitError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


def items(values, name: str, check) -> tuple:
    """A comma list: at most MAX_LIST items, each checked by `check(item, name)`."""
    values = tuple(values)
    if len(values) > MAX_LIST:
        raise LowbitError(f"{name} takes at most {MAX_LIST} values, got {len(values)}")
    return tuple(check(v, name) for v in values)
