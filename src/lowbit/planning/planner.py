"""The planner: model x scenario (weight mix, KV formats) x context x sequences x engine -> bytes, with provenance.

Weights are *exact* (llama.cpp mix rules x gguf block sizes). The KV cache, recurrent state and runtime
buffers come from the chosen engine (lowbit.planning.engines), which names for each whether it is exact
for its rule or estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from lowbit.errors import LowbitError
from lowbit.formats.weights import GGUF_ALIGNMENT, STORED, Mix, WeightType, aligned, mix, weight_type
from lowbit.models.catalog import ResolvedModel, resolve
from lowbit.models.config import ModelConfig
from lowbit.models.gguf_size import header_size
from lowbit.models.tensors import KINDS, VISION, Tensor, gguf_order, inventory
from lowbit.planning.engines import Engine, LlamaCpp, engine_model
from lowbit.planning.mix import assign
from lowbit.planning.recipe import Recipe
from lowbit.planning.scenario import Scenario
from lowbit.planning.stored import stored_weights
from lowbit.planning.tensorplan import TensorPlan

__all__ = ["Plan", "TensorPlan", "plan", "context_for", "weight_types", "header_estimate"]

MAX_CONTEXT = 1 << 27  # 134M tokens: beyond any model; guards absurd input
MAX_SEQUENCES = 1 << 16
MIX_PROVENANCE = "exact: llama.cpp mix rules x gguf block sizes, each tensor padded to 32 bytes"
DEFAULT_CONTEXT = 262_144  # without a context: this, or the model's trained maximum if smaller
FORCE_HINT = ("give --force-context to plan it anyway (lowbit follows vLLM, which refuses such a max_model_len "
              "unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1; llama.cpp only warns)")


def header_estimate(cfg: ModelConfig, mtp: bool = False) -> int:
    """The GGUF header of a model known only by its config (no tokenizer files): estimated."""
    tensors = [t for t in inventory(cfg, mtp=mtp) if t.kind != VISION]
    return header_size(cfg, tensors).bytes


@dataclass(repr=False)
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
    header_bytes: int  # the text GGUF's header: metadata, tokenizer, tensor infos, padded
    header_exact: bool
    kv_cells: dict[str, int] = field(default_factory=dict)
    engine: Engine = field(default_factory=LlamaCpp)
    padding: int = GGUF_ALIGNMENT  # each tensor's bytes padded to this (1: a safetensors checkpoint as stored)
    weights_provenance: str = MIX_PROVENANCE
    recipe: Recipe = field(default_factory=Recipe)  # llama-quantize's options; imatrix resolved
    imatrix_assumed: bool = True  # the importance matrix was inferred (None given), not stated
    header_provenance: str = ""
    origin: dict = field(default_factory=dict)  # a GGUF's files, and the bytes fetched to read a remote one

    @property
    def file_bytes(self) -> int:
        """The text GGUF file: header plus every tensor's data padded to 32 bytes (the vision tower's
        mmproj is a file of its own)."""
        return self.header_bytes + sum(aligned(t.bytes) for t in self.tensors if t.kind != VISION)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.state_bytes + self.runtime_bytes

    def __repr__(self) -> str:
        s = self.scenario
        return (f"<Plan {self.model} {s.mix.name}{' pure' if s.pure else ''}+{s.k.name}/{s.v.name} "
                f"{self.context:,} tokens x {self.sequences} on {self.engine.name}: {self.total_bytes:,} bytes>")

    def provenance(self) -> dict[str, str]:
        """Where each figure comes from: exact (format definitions) or estimated (assumption named)."""
        notes = self.engine.assumptions()
        return {
            "weights_bytes": self.weights_provenance + (f"; {notes['weights']}" if "weights" in notes else ""),
            "kv_bytes": notes["kv"],
            "state_bytes": notes["state"],
            "runtime_bytes": notes["runtime"],
            "gguf_header_bytes": self.header_provenance,
            "file_bytes": f"{self.header_provenance.partition(':')[0]}: the GGUF header + tensor data padded to 32 bytes"
                          + (" (text model; the vision tower is its own mmproj file)" if
                             any(t.kind == VISION for t in self.tensors) else ""),
        }

    def padded(self, nbytes: int) -> int:
        """One tensor's bytes as its file stores it."""
        return -(-nbytes // self.padding) * self.padding

    def by_kind(self) -> dict[str, dict[str, int | list[str]]]:
        out: dict[str, dict] = {}
        for t in self.tensors:
            row = out.setdefault(t.kind, {"tensors": 0, "params": 0, "bytes": 0, "types": []})
            row["tensors"] += 1
            row["params"] += math.prod(t.shape)
            row["bytes"] += self.padded(t.bytes)
            if t.type not in row["types"]:
                row["types"].append(t.type)
        return {k: out[k] for k in KINDS if k in out}

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "scenario": self.scenario.to_json(),
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
            "file_bytes": self.file_bytes,
            **({"source": self.origin} if self.origin else {}),
            "kv_cells": self.kv_cells,
            "engine": self.engine.name,
            "recipe": {**self.recipe.to_json(), "imatrix_assumed": self.imatrix_assumed,
                       "llama_quantize": " ".join(["llama-quantize", *self.recipe.args(), "IN.gguf", "OUT.gguf",
                                                   self.scenario.mix.name])},
            "provenance": self.provenance(),
            "by_kind": self.by_kind(),
            "tensors": [{"name": t.name, "shape": list(t.shape), "kind": t.kind, "type": t.type, "bytes": t.bytes}
                        for t in self.tensors],
        }


def context_for(cfg: ModelConfig, context: int | None, force: bool = False) -> int:
    """The context to plan `cfg` at: `context`, refused beyond the model's trained maximum unless `force`;
    without one, DEFAULT_CONTEXT or the trained maximum if that is smaller."""
    if context is None:
        return min(DEFAULT_CONTEXT, cfg.max_context) if cfg.max_context else DEFAULT_CONTEXT
    if cfg.max_context and not force and isinstance(context, int) and context > cfg.max_context:
        raise LowbitError(f"context {context:,} is beyond {cfg.name}'s trained maximum of {cfg.max_context:,} tokens "
                          f"({cfg.max_context_from}); {FORCE_HINT}")
    return context


def _check_counts(context: int, sequences: int) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= MAX_CONTEXT:
        raise LowbitError(f"context must be an integer from 1 to {MAX_CONTEXT:,} tokens, got {context!r}")
    if isinstance(sequences, bool) or not isinstance(sequences, int) or not 1 <= sequences <= MAX_SEQUENCES:
        raise LowbitError(f"sequences must be an integer from 1 to {MAX_SEQUENCES:,}, got {sequences!r}")


def weight_types(
    cfg: ModelConfig, tensors: list[Tensor], weights: str | Mix, pure: bool = False, imatrix: bool | None = None,
    recipe: Recipe | None = None,
) -> dict[str, WeightType]:
    """Each tensor's type under the mix and llama-quantize's options (`recipe`, or just `pure`/`imatrix`)."""
    recipe = recipe or Recipe(pure=pure, imatrix=imatrix)
    return _typed(cfg, tensors, weights, recipe)[0]


def _typed(cfg: ModelConfig, tensors: list[Tensor], weights: str | Mix,
           recipe: Recipe) -> tuple[dict[str, WeightType], bool, bool]:
    text = [t for t in tensors if t.kind != VISION]
    a = assign(text, weights if isinstance(weights, Mix) else mix(weights), cfg, recipe)
    types = dict(a.types)
    # The vision tower is llama.cpp's separate mmproj file, which ships at F16 (1-D tensors F32).
    types.update({t.name: weight_type("F32" if len(t.shape) == 1 else "F16") for t in tensors if t.kind == VISION})
    return types, a.imatrix, a.imatrix_assumed


def _scenario(weights: str | Scenario, kv: str | None, kv_k: str | None, kv_v: str | None, pure: bool,
              name: str) -> Scenario:
    if not isinstance(weights, Scenario):
        return Scenario.of(weights, kv_k or kv or "f16", kv_v or kv or "f16", name=name, pure=pure)
    if kv or kv_k or kv_v or name:
        raise LowbitError("give the formats either as a Scenario or as weights and kv, not both")
    return replace(weights, pure=True) if pure and not weights.pure else weights


def plan(
    model: str | ResolvedModel,
    weights: str | Scenario | None = None,
    kv: str | None = None,
    kv_k: str | None = None,
    kv_v: str | None = None,
    context: int | None = None,
    sequences: int = 1,
    pure: bool = False,
    mtp: bool = False,
    vision: bool = False,
    scenario_name: str = "",
    imatrix: bool | None = None,
    engine: str | Engine = "llama.cpp",
    force_context: bool = False,
    *,
    tensor_types=(),
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    leave_output_tensor: bool = False,
    recipe: Recipe | None = None,
) -> Plan:
    """Plan one model under one scenario. `model`: built-in name, config.json path or .gguf path.

    The formats come as a `Scenario`, or as a mix name (`weights`) and KV formats (`kv` for K and V, f16 by
    default; `kv_k`, `kv_v` for one of them). `weights="stored"` takes the model's own tensors from its file
    (a .gguf, or a checkpoint folder's safetensors); that is the default for a .gguf, Q4_K_M for the rest.
    `pure` gives every tensor the mix's default type.
    `imatrix=None` assumes an importance matrix exactly when llama-quantize would refuse the recipe
    without one; `imatrix=False` refuses such a recipe, as llama-quantize does.
    llama-quantize's per-tensor options: `tensor_types` ('PATTERN=TYPE' strings, pairs or an ordered
    mapping, first match wins), `output_tensor_type`, `token_embedding_type`, `leave_output_tensor`; or
    all of them (with `pure` and `imatrix`) as one `recipe` (lowbit.planning.recipe.Recipe).
    `engine` (a name or a lowbit.planning.engines object) allocates the KV cache, state and runtime buffers.
    `context` defaults to 262,144 tokens or the model's trained maximum if smaller; a larger one than that
    maximum is refused unless `force_context` (as vLLM refuses it).
    """
    resolved = resolve(model) if isinstance(model, str) else model
    cfg = resolved.config
    _check_counts(DEFAULT_CONTEXT if context is None else context, sequences)
    context = context_for(cfg, context, force_context)
    eng = engine_model(engine)
    if weights is None:
        weights = eng.default_weights or ("stored" if resolved.gguf is not None else "Q4_K_M")
    scenario = _scenario(weights, kv, kv_k, kv_v, pure, scenario_name)
    eng.check_weights("stored" if scenario.mix is STORED else scenario.mix.name, resolved.gguf is not None)
    if recipe is None:
        recipe = Recipe.of(tensor_types, output_tensor_type, token_embedding_type, leave_output_tensor,
                           scenario.pure, imatrix)
    elif tensor_types or output_tensor_type or token_embedding_type or leave_output_tensor or imatrix is not None:
        raise LowbitError("give llama-quantize's options either as a Recipe or one by one, not both")
    elif scenario.pure and not recipe.pure:
        recipe = replace(recipe, pure=True)
    imatrix_used, imatrix_assumed = False, True
    if scenario.mix is STORED:
        if scenario.pure or vision:
            raise LowbitError("--weights stored plans the file's own tensors: --pure and --vision do not apply")
        if recipe.tensor_types or recipe.output_tensor_type or recipe.token_embedding_type or \
                recipe.leave_output_tensor or recipe.imatrix is not None:
            raise LowbitError("--weights stored plans the file's own tensors: llama-quantize's options need a mix "
                              "(--weights Q4_K_M, ...)")
        stored = stored_weights(resolved, mtp)
        planned, padding, provenance = stored.tensors, stored.padding, stored.provenance
        params_total, active = stored.params_total, stored.params_active
    else:
        if recipe.pure and not scenario.pure:
            scenario = replace(scenario, pure=True)
        tensors = gguf_order(inventory(cfg, mtp=mtp, vision=vision))
        types, imatrix_used, imatrix_assumed = _typed(cfg, tensors, scenario.mix, recipe)
        planned = [TensorPlan(t.name, t.shape, t.kind, types[t.name].name, types[t.name].tensor_bytes(t.shape))
                   for t in tensors]
        padding, provenance = GGUF_ALIGNMENT, MIX_PROVENANCE
        params_total = sum(t.n_params for t in tensors)
        active = sum(round(t.n_params * t.per_token_active) for t in tensors)
    alloc = eng.allocate(cfg, scenario.k, scenario.v, context, sequences, mtp)
    if resolved.gguf is not None:
        files = resolved.origin.get("files", [])
        where = f"its {len(files)} files" if len(files) > 1 else "the file"
        how = " (headers fetched over HTTP)" if "url" in resolved.origin else ""
        header, header_exact, header_note = resolved.gguf.data_offset, True, f"exact: read from {where}{how}"
    else:
        text = [t for t in gguf_order(inventory(cfg, mtp=mtp)) if t.kind != VISION]
        size = header_size(cfg, text, resolved.path)
        header, header_exact, header_note = size.bytes, False, size.provenance
    return Plan(
        model=cfg.name,  # built-ins are named canonically; files by their file or folder name
        config=cfg,
        scenario=scenario,
        context=context,
        sequences=sequences,
        tensors=planned,
        params_total=params_total,
        params_active=active,
        weights_bytes=sum(-(-t.bytes // padding) * padding for t in planned),
        kv_bytes=alloc.kv_bytes,
        kv_k_bytes=alloc.kv_k_bytes,
        kv_v_bytes=alloc.kv_v_bytes,
        state_bytes=alloc.state_bytes,
        runtime_bytes=alloc.runtime_bytes,
        header_bytes=header,
        header_exact=header_exact,
        header_provenance=header_note,
        origin=resolved.origin,
        kv_cells=alloc.cells,
        engine=eng,
        padding=padding,
        weights_provenance=provenance,
        recipe=replace(recipe, imatrix=imatrix_used),
        imatrix_assumed=imatrix_assumed,
    )
