"""The planner: model x weight mix x KV format x context x sequences -> bytes, with provenance.

Weights, KV cache and recurrent state are *exact* for llama.cpp (format definitions times shapes).
Runtime buffers are *estimated* and named as such (`RUNTIME_ASSUMPTION`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lowbit.errors import LowbitError
from lowbit.formats.kv import KVFormat, kv_format
from lowbit.formats.weights import WeightType, aligned, mix, weight_type
from lowbit.models.catalog import ResolvedModel, resolve
from lowbit.models.config import FULL, LINEAR, SLIDING, ModelConfig
from lowbit.models.tensors import KINDS, VISION, Tensor, gguf_order, inventory
from lowbit.planning.mix import assign_types

MAX_CONTEXT = 1 << 27  # 134M tokens: beyond any model; guards absurd input
MAX_SEQUENCES = 1 << 16
N_UBATCH = 512  # llama.cpp default micro-batch
KV_PAD = 256  # llama.cpp pads the KV cache to 256 cells (flash attention)
RUNTIME_ASSUMPTION = (
    "estimated: llama.cpp output buffer (f32 logits for one token per sequence) plus its compute graph "
    f"for one {N_UBATCH}-token micro-batch (f32 logits for every token plus the widest layer's activations), "
    "flash attention on"
)
HEADER_ASSUMPTION = (
    "estimated: GGUF metadata and tokenizer: per vocabulary entry 36 bytes for BPE tokenizers (token string, type, "
    "one merge) or 24 for SentencePiece (Gemma: string, score, type), plus 64 KiB of other metadata"
)


def header_estimate(cfg: ModelConfig) -> int:
    per_token = 24 if cfg.arch.startswith("gemma") else 36
    return aligned(per_token * cfg.vocab_size + (64 << 10))


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class Scenario:
    name: str
    weights: str  # a llama.cpp mix name (Q4_K_M, Q1_0, ...); pure=True gives every tensor its default type
    kv_k: str
    kv_v: str
    pure: bool = False

    @staticmethod
    def parse(text: str) -> "Scenario":
        """NAME=WEIGHTS+KV or NAME=WEIGHTS+KVK/KVV, e.g. `mine=Q2_K+q8_0/turbo3`."""
        name, sep, rest = text.partition("=")
        weights, plus, kv = rest.partition("+")
        if not sep or not plus or not name or not weights or not kv:
            raise LowbitError(f"--scenario wants NAME=WEIGHTS+KV (e.g. today=Q4_K_M+f16), got {text!r}")
        k, _, v = kv.partition("/")
        mix(weights), kv_format(k), kv_format(v or k)  # validate now, fail with one line
        return Scenario(name, weights.upper(), k.lower(), (v or k).lower())


TODAY = Scenario("today", "Q4_K_M", "f16", "f16")
ONEBIT_TURBO = Scenario("1bit-turbo", "Q1_0", "turbo3", "turbo3")


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    kind: str
    type: str
    bytes: int  # unpadded (ggml_nbytes); the file pads each to 32


@dataclass
class Plan:
    model: str
    config: ModelConfig
    scenario: Scenario
    context: int
    sequences: int
    tensors: list[TensorPlan]
    params_total: int
    params_active: int
    weights_bytes: int
    kv_bytes: int
    kv_k_bytes: int
    kv_v_bytes: int
    state_bytes: int
    runtime_bytes: int
    header_bytes: int
    header_exact: bool
    kv_cells: dict[str, int] = field(default_factory=dict)
    engine: str = "llama.cpp"

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.state_bytes + self.runtime_bytes

    def provenance(self) -> dict[str, str]:
        """Where each figure comes from: exact (format definitions) or estimated (assumption named)."""
        from lowbit.planning.engines import engine_model

        notes = engine_model(self.engine).assumptions()
        return {
            "weights_bytes": "exact: llama.cpp mix rules x gguf block sizes, each tensor padded to 32 bytes",
            "kv_bytes": notes["kv"],
            "state_bytes": notes["state"],
            "runtime_bytes": notes["runtime"],
            "gguf_header_bytes": "exact: read from the file" if self.header_exact else HEADER_ASSUMPTION,
        }

    def by_kind(self) -> dict[str, dict[str, int | list[str]]]:
        out: dict[str, dict] = {}
        for t in self.tensors:
            row = out.setdefault(t.kind, {"tensors": 0, "params": 0, "bytes": 0, "types": []})
            row["tensors"] += 1
            row["params"] += math.prod(t.shape)
            row["bytes"] += aligned(t.bytes)
            if t.type not in row["types"]:
                row["types"].append(t.type)
        return {k: out[k] for k in KINDS if k in out}

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "scenario": {"name": self.scenario.name, "weights": self.scenario.weights, "kv_k": self.scenario.kv_k,
                         "kv_v": self.scenario.kv_v, "pure": self.scenario.pure},
            "context": self.context,
            "sequences": self.sequences,
            "params": {"total": self.params_total, "active": self.params_active},
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "kv_k_bytes": self.kv_k_bytes,
            "kv_v_bytes": self.kv_v_bytes,
            "state_bytes": self.state_bytes,
            "runtime_bytes": self.runtime_bytes,
            "total_bytes": self.total_bytes,
            "gguf_header_bytes": self.header_bytes,
            "kv_cells": self.kv_cells,
            "engine": self.engine,
            "provenance": self.provenance(),
            "by_kind": self.by_kind(),
            "tensors": [{"name": t.name, "shape": list(t.shape), "kind": t.kind, "type": t.type, "bytes": t.bytes}
                        for t in self.tensors],
        }


def _check_counts(context: int, sequences: int) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= MAX_CONTEXT:
        raise LowbitError(f"context must be an integer from 1 to {MAX_CONTEXT:,} tokens, got {context!r}")
    if isinstance(sequences, bool) or not isinstance(sequences, int) or not 1 <= sequences <= MAX_SEQUENCES:
        raise LowbitError(f"sequences must be an integer from 1 to {MAX_SEQUENCES:,}, got {sequences!r}")


def weight_types(
    cfg: ModelConfig, tensors: list[Tensor], weights: str, pure: bool = False, imatrix: bool | None = None
) -> dict[str, WeightType]:
    text = [t for t in tensors if t.kind != VISION]
    types = assign_types(text, mix(weights), cfg, pure=pure, imatrix=imatrix)
    # The vision tower is llama.cpp's separate mmproj file, which ships at F16 (1-D tensors F32).
    types.update({t.name: weight_type("F32" if len(t.shape) == 1 else "F16") for t in tensors if t.kind == VISION})
    return types


# Architectures llama.cpp runs with a sliding-window cache; for any other (Mistral's GGUF is `llama`) it
# allocates the full context even where the model was trained with a window.
LLAMA_CPP_SWA_ARCHES = {"gemma3"}


def layer_cells(cfg: ModelConfig, context: int, mtp: bool = False) -> list[int]:
    """KV cells each layer holds per sequence in llama.cpp (0 for recurrent layers), MTP layers appended.

    Full attention: the context padded to 256. Sliding window: window + one micro-batch, padded, at most
    the full size (llama_kv_cache_iswa, one stream per sequence).
    """
    full = _pad(context, KV_PAD)
    swa = full
    if cfg.sliding_window and cfg.arch in LLAMA_CPP_SWA_ARCHES:
        swa = min(full, _pad(cfg.sliding_window + N_UBATCH, KV_PAD))
    cells = [0 if t == LINEAR else swa if t == SLIDING else full for t in cfg.layer_types]
    return cells + [full] * (cfg.mtp_layers if mtp else 0)


def layer_kv_heads(cfg: ModelConfig, mtp: bool = False) -> list[int]:
    return list(cfg.num_kv_heads) + [max(cfg.num_kv_heads)] * (cfg.mtp_layers if mtp else 0)


def kv_cache_bytes(cfg: ModelConfig, kv: KVFormat, context: int, sequences: int, mtp: bool = False) -> tuple[int, dict]:
    """Bytes of one of K or V for the whole cache, and the cells each layer type holds (llama.cpp)."""
    cells = layer_cells(cfg, context, mtp)
    total = sum(c * h for c, h in zip(cells, layer_kv_heads(cfg, mtp))) * sequences * kv.vector_bytes(cfg.head_dim)
    by_type = {FULL: _pad(context, KV_PAD) * sequences}
    for t, c in zip(cfg.layer_types, cells):
        if t == SLIDING:
            by_type[SLIDING] = c * sequences
    return total, by_type


def recurrent_state_bytes(cfg: ModelConfig, sequences: int) -> int:
    """Recurrent layers (Gated DeltaNet, Mamba-2): conv window (kernel-1 x conv_dim) + state (heads x dk x dv), f32,
    per sequence (llama.cpp n_embd_r and n_embd_s)."""
    per_layer = (cfg.linear_conv_kernel_dim - 1) * cfg.gdn_conv_dim + (
        cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim
    )
    return cfg.count(LINEAR) * per_layer * 4 * sequences


def activations_per_token(cfg: ModelConfig) -> int:
    """Values one token's widest layer keeps live (the runtime estimates' unit): 4 x hidden plus twice the
    widest projection (the FFN, MoE top-k + shared, gated query, or Gated DeltaNet conv)."""
    ffn = cfg.intermediate_size
    if cfg.is_moe:
        ffn = max(ffn, cfg.num_experts_used * cfg.moe_intermediate_size + cfg.shared_expert_intermediate_size)
    return 4 * cfg.hidden_size + 2 * max(ffn, cfg.num_heads * cfg.head_dim * 2, cfg.gdn_conv_dim)


def runtime_bytes(cfg: ModelConfig, sequences: int) -> int:
    output_buffer = cfg.vocab_size * sequences * 4
    compute = N_UBATCH * (cfg.vocab_size + activations_per_token(cfg)) * 4
    return output_buffer + compute


def plan(
    model: str | ResolvedModel,
    weights: str = "Q4_K_M",
    kv: str = "f16",
    kv_k: str | None = None,
    kv_v: str | None = None,
    context: int = 262_144,
    sequences: int = 1,
    pure: bool = False,
    mtp: bool = False,
    vision: bool = False,
    scenario_name: str = "",
    imatrix: bool | None = None,
    engine: str = "llama.cpp",
) -> Plan:
    """Plan one model under one scenario. `model`: built-in name, config.json path or .gguf path.

    `imatrix=None` assumes an importance matrix exactly for the mixes llama-quantize requires one for.
    `engine` other than llama.cpp takes KV, state and runtime bytes from lowbit.planning.engines.
    """
    _check_counts(context, sequences)
    resolved = resolve(model) if isinstance(model, str) else model
    cfg = resolved.config
    k_fmt, v_fmt = kv_format(kv_k or kv), kv_format(kv_v or kv)
    scenario = Scenario(scenario_name or f"{weights}+{k_fmt.name}/{v_fmt.name}", weights.upper(), k_fmt.name,
                        v_fmt.name, pure)
    tensors = gguf_order(inventory(cfg, mtp=mtp, vision=vision))
    types = weight_types(cfg, tensors, weights, pure, imatrix)
    planned = [TensorPlan(t.name, t.shape, t.kind, types[t.name].name, types[t.name].tensor_bytes(t.shape))
               for t in tensors]
    k_bytes, cells = kv_cache_bytes(cfg, k_fmt, context, sequences, mtp)
    v_bytes, _ = kv_cache_bytes(cfg, v_fmt, context, sequences, mtp)
    state, runtime = recurrent_state_bytes(cfg, sequences), runtime_bytes(cfg, sequences)
    if engine != "llama.cpp":  # other engines allocate differently (lowbit.planning.engines)
        from lowbit.planning.engines import engine_model

        alloc = engine_model(engine).allocate(cfg, k_fmt, v_fmt, context, sequences, mtp)
        k_bytes, v_bytes, cells = alloc.kv_k_bytes, alloc.kv_v_bytes, alloc.cells
        state, runtime = alloc.state_bytes, alloc.runtime_bytes
    if resolved.gguf is not None:
        header, header_exact = resolved.gguf.data_offset, True
    else:
        header, header_exact = header_estimate(cfg), False
    active = sum(round(t.n_params * t.per_token_active) for t in tensors)
    return Plan(
        model=cfg.name,  # built-ins are named canonically; files by their file or folder name
        config=cfg,
        scenario=scenario,
        context=context,
        sequences=sequences,
        tensors=planned,
        params_total=sum(t.n_params for t in tensors),
        params_active=active,
        weights_bytes=sum(aligned(t.bytes) for t in planned),
        kv_bytes=k_bytes + v_bytes,
        kv_k_bytes=k_bytes,
        kv_v_bytes=v_bytes,
        state_bytes=state,
        runtime_bytes=runtime,
        header_bytes=header,
        header_exact=header_exact,
        kv_cells=cells,
        engine=engine,
    )
