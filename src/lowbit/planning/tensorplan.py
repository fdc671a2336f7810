"""One planned tensor: its name, ggml-order shape, class, type and bytes (shared by the planner and `stored`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    kind: str
    type: str
    bytes: int  # unpadded (ggml_nbytes); a GGUF pads each to its alignment
