"""Weights as stored (`--weights stored`): a model's own tensors, read from its file, in place of a mix's.

A GGUF gives its tensor types and sizes in its header; a safetensors checkpoint its dtypes and shapes,
named here the way the engines place GGUF tensors. Nothing past the headers is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lowbit.errors import LowbitError
from lowbit.models.catalog import ResolvedModel
from lowbit.models.safetensors import Checkpoint, load_checkpoint
from lowbit.models.tensors import ATTN, EMBED, EXPERTS, MLP, MTP, NORM, OUTPUT, ROUTER, VISION, inventory
from lowbit.planning.tensorplan import TensorPlan

_HF_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class StoredWeights:
    tensors: list[TensorPlan]
    params_total: int
    params_active: int
    padding: int  # each tensor's bytes are padded to this in the file (1: not padded)
    provenance: str


def as_planned(ckpt: Checkpoint, mtp: bool = False) -> list[TensorPlan]:
    """The checkpoint's tensors as planner TensorPlans, with the GGUF names placement goes by."""
    out = []
    for t in ckpt.tensors:
        name, kind = t.name, MLP
        m = _HF_LAYER.search(t.name)
        if "visual" in t.name or "vision" in t.name:
            kind = VISION
        elif t.name.startswith("mtp.") or ".mtp." in t.name:
            if not mtp:
                continue  # vLLM loads the MTP block only for speculative decoding
            kind = MTP
        elif t.name.endswith("embed_tokens.weight"):
            name, kind = "token_embd.weight", EMBED
        elif t.name.endswith("lm_head.weight"):
            name, kind = "output.weight", OUTPUT
        elif m:
            rest = m.group(2)
            if re.search(r"experts\.", rest) and "shared_expert" not in rest:
                kind = EXPERTS
            elif rest.endswith("mlp.gate.weight"):
                kind = ROUTER
                rest = "ffn_gate_inp.weight"
            elif re.search(r"(k_proj|v_proj)\.weight$", rest):
                kind, rest = ATTN, "attn_k.weight" if "k_proj" in rest else "attn_v.weight"
            elif "norm" in rest:
                kind = NORM
            name = f"blk.{m.group(1)}.{rest}"
        elif "norm" in t.name:
            kind = NORM
        out.append(TensorPlan(name, t.shape, kind, t.dtype, t.nbytes))
    return out


def stored_weights(resolved: ResolvedModel, mtp: bool = False) -> StoredWeights:
    """The model's weights exactly as its file holds them: a .gguf, or a checkpoint folder's safetensors."""
    cfg = resolved.config
    if resolved.gguf is not None:
        known = {t.name: t for t in inventory(cfg, mtp=True)}
        tensors, active = [], 0
        for t in resolved.gguf.tensors:
            ref = known.get(t.name)
            kind = ref.kind if ref else (OUTPUT if t.name.startswith("output") else MLP)
            if kind == MTP and not mtp:
                continue  # the next-token block: loaded only for speculative decoding, as --mtp asks
            tensors.append(TensorPlan(t.name, tuple(t.shape), kind, t.type_name, t.nbytes))
            active += round(math.prod(t.shape) * (ref.per_token_active if ref else 1.0))
        return StoredWeights(tensors, sum(math.prod(t.shape) for t in tensors), active, resolved.gguf.alignment,
                             "exact: the GGUF's own tensor types and sizes, read from its header, each padded to "
                             f"{resolved.gguf.alignment} bytes")
    if resolved.path is None:
        raise LowbitError(f"--weights stored needs a file to read: a .gguf or a local checkpoint folder (config.json + "
                          f"safetensors); {cfg.name} is a built-in config with no weights")
    tensors = as_planned(load_checkpoint(resolved.path), mtp)
    share = cfg.num_experts_used / cfg.num_experts if cfg.is_moe else 1.0
    params = sum(math.prod(t.shape) for t in tensors)
    active = sum(round(math.prod(t.shape) * (share if t.kind == EXPERTS else 1.0)) for t in tensors)
    return StoredWeights(tensors, params, active, 1,
                         "exact: the checkpoint's safetensors headers (dtype x shape), as stored")
