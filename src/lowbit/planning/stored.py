"""A safetensors checkpoint fitted as stored (`lowbit fit DIR --weights stored`): its own dtypes and bytes
take the place of a llama.cpp mix's, named the way the engines place GGUF tensors."""

from __future__ import annotations

import re
from pathlib import Path

from lowbit.devices import Budget
from lowbit.errors import LowbitError
from lowbit.models.safetensors import Checkpoint, load_checkpoint
from lowbit.models.tensors import ATTN, EMBED, EXPERTS, MLP, MTP, NORM, OUTPUT, ROUTER, VISION
from lowbit.planning.engines import Engine
from lowbit.planning.fit import FitResult, fit
from lowbit.planning.planner import TensorPlan

_HF_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.*)$")


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


def stored_fit(model: str, budget: Budget | str, kv_k: str = "f16", kv_v: str | None = None,
               context: int | None = None, users: int = 1, engine: str | Engine = "llama.cpp") -> FitResult:
    """`lowbit fit CHECKPOINT --weights stored`: weights exactly as the safetensors hold them."""
    if not isinstance(model, str) or not Path(model).expanduser().is_dir():
        raise LowbitError("--weights stored needs MODEL to be a local checkpoint folder (config.json + safetensors)")
    ckpt = load_checkpoint(model)
    return fit(model, budget, "Q8_0", kv_k, kv_v, context, users, engine, stored=as_planned(ckpt))
