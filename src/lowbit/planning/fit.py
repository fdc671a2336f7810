"""Fit and plan: will a model run on a device, and how far can it be pushed?

Built on the exact simulator: `Costs` computes everything that does not depend on the context or the
number of users once (weights, from the planner, tensor by tensor), and `Costs.need(context, users)`
adds the engine's KV cache, recurrent state and runtime buffers for one device. Every inverse solver
here (largest context, most users, best weight format, layers/experts to keep in CPU RAM) searches
that forward function, so an answer is exactly as good as the simulator: the largest context fits
and one token more does not (tests/test_fit_properties.py).

Placement follows the engine (lowbit.planning.engines: `Engine.place`): llama.cpp splits whole layers
over GPUs and offloads experts, then layers, to CPU RAM; vLLM splits tensors over GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from lowbit.devices import Budget, budget as make_budget, catalog, usable
from lowbit.errors import LowbitError
from lowbit.formats.kv import kv_format
from lowbit.formats.weights import STORED
from lowbit.models.catalog import ResolvedModel, resolve
from lowbit.planning.engines import Engine, Need, engine_model
from lowbit.planning.planner import MAX_CONTEXT, MAX_SEQUENCES, Plan, context_for, plan
from lowbit.planning.search import largest
from lowbit.planning.speed import Speed, estimate

# Weight mixes tried by best_weights, any order: they are ranked by their real size for the model.
CANDIDATE_MIXES = (
    "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS", "Q3_K_L", "Q3_K_M", "IQ3_M",
    "Q3_K_S", "IQ3_XS", "IQ3_XXS", "Q2_K", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "Q1_0",
)
DEFAULT_CONTEXT = 32_768  # a sane default: "does it fit at the model maximum" is rarely the question


class Costs:
    """A model under one weight mix, KV formats, engine and device budget; need() is cheap."""

    def __init__(self, model: str | ResolvedModel, budget: Budget, weights: str | None = None, kv_k: str = "f16",
                 kv_v: str | None = None, engine: str | Engine = "llama.cpp", mtp: bool = False,
                 vision: bool = False):
        self.resolved = resolve(model) if isinstance(model, str) else model
        self.cfg = self.resolved.config
        self.budget = budget
        self.mtp = mtp
        self.k, self.v = kv_format(kv_k), kv_format(kv_v or kv_k)
        eng = engine_model(engine)
        # `stored`: the file's own tensors (lowbit.planning.stored) instead of a mix's
        self.plan1: Plan = plan(self.resolved, weights, kv_k=self.k.name, kv_v=self.v.name, context=1, sequences=1,
                                mtp=mtp, vision=vision, engine=eng)
        self.weights = "stored" if self.plan1.scenario.mix is STORED else self.plan1.scenario.mix.name
        self.tensors = self.plan1.tensors
        self.placement = eng.place(self.cfg, self.k, self.v, self.tensors, budget, mtp, pad=self.plan1.padded)
        self.engine: Engine = self.placement.engine  # configured for the budget (vLLM: tp = the GPU count)
        self.limit = self.placement.limit

    # --- the forward function every solver searches --------------------------------------------
    def need(self, context: int, users: int = 1) -> Need:
        return self.placement.need(context, users)

    def fits(self, context: int, users: int = 1) -> bool:
        return self.need(context, users).device_bytes <= self.limit

    # --- inverse solves -----------------------------------------------------------------------
    def context_cap(self) -> int:
        return self.cfg.max_context or MAX_CONTEXT

    def max_context(self, users: int = 1) -> int | None:
        """Largest context (tokens per user) that fits, up to the model's trained maximum; None if none does."""
        return largest(lambda c: self.fits(c, users), 1, self.context_cap())

    def max_users(self, context: int) -> int | None:
        return largest(lambda u: self.fits(context, u), 1, MAX_SEQUENCES)


# ---------------------------------------------------------------------------------------------
# The answers `lowbit fit` prints
# ---------------------------------------------------------------------------------------------


@dataclass(repr=False)
class FitResult:
    model: str
    budget: Budget
    engine: str
    weights: str
    kv_k: str
    kv_v: str
    context: int
    users: int
    need: Need
    limit: int
    max_context: int | None
    max_users: int | None
    best_weights: str | None
    offload: dict
    assumptions: dict = field(default_factory=dict)
    context_cap: int = MAX_CONTEXT
    speed: Speed | None = None  # decode/prefill estimate at `context` x `users` (a device with speed figures)

    def __repr__(self) -> str:
        b = self.budget
        return (f"<FitResult {self.model} on {b.name}{f' x {b.gpus}' if b.gpus > 1 else ''} ({self.engine}) "
                f"{self.weights}+{self.kv_k}/{self.kv_v} {self.context:,} tokens x {self.users}: "
                f"{'fits' if self.fits else 'does not fit'}, max context {self.max_context}>")

    @property
    def limited_by(self) -> str | None:
        """Why max_context stops where it does: the device's memory or the model's trained context."""
        if self.max_context is None:
            return None
        return "model" if self.max_context >= self.context_cap else "memory"

    @property
    def fits(self) -> bool:
        return self.need.device_bytes <= self.limit

    def to_json(self) -> dict:
        b = self.budget
        return {
            "model": self.model,
            "device": b.name,
            "memory_bytes": b.memory_bytes,
            "usable_bytes": self.limit,
            "gpus": b.gpus,
            "engine": self.engine,
            "weights": self.weights,
            "kv_k": self.kv_k,
            "kv_v": self.kv_v,
            "context": self.context,
            "users": self.users,
            "fits": self.fits,
            "need_bytes": self.need.device_bytes,
            "headroom_bytes": self.limit - self.need.device_bytes,
            "host_bytes": self.need.host_bytes,
            "breakdown": {"weights_bytes": self.need.weights_bytes, "kv_bytes": self.need.kv_bytes,
                          "state_bytes": self.need.state_bytes, "runtime_bytes": self.need.runtime_bytes},
            "per_gpu": [{"gpu": i, "weights_bytes": g.weights_bytes, "kv_bytes": g.kv_bytes, "state_bytes": g.state_bytes,
                         "runtime_bytes": g.runtime_bytes, "total_bytes": g.total_bytes}
                        for i, g in enumerate(self.need.per_gpu)],
            "max_context": self.max_context,
            "max_context_limited_by": self.limited_by,
            "max_users": self.max_users,
            "best_weights": self.best_weights,
            "offload": self.offload,
            "assumptions": self.assumptions,
            "speed": self.speed.to_json() if self.speed else None,
        }


def best_weights(model: str | ResolvedModel, budget: Budget, context: int, users: int = 1, kv_k: str = "f16",
                 kv_v: str | None = None, engine: str | Engine = "llama.cpp", mtp: bool = False, vision: bool = False,
                 candidates: tuple[str, ...] = CANDIDATE_MIXES) -> str | None:
    """The largest (highest-bit) weight mix that fits at `context` x `users`; None if none does."""
    resolved = resolve(model) if isinstance(model, str) else model
    ranked = []
    for name in candidates:
        try:
            c = Costs(resolved, budget, name, kv_k, kv_v, engine, mtp, vision)
        except LowbitError:
            continue  # a mix this model's shapes cannot take
        ranked.append((c.plan1.weights_bytes, name, c))
    for _, name, c in sorted(ranked, key=lambda r: -r[0]):
        if c.fits(context, users):
            return name
    return None


def fit(model: str | ResolvedModel, budget: Budget | str, weights: str | None = None, kv_k: str = "f16",
        kv_v: str | None = None, context: int | None = None, users: int = 1, engine: str | Engine = "llama.cpp",
        mtp: bool = False, vision: bool = False, force_context: bool = False, host: str | None = None) -> FitResult:
    """Everything `lowbit fit` answers for one model on one budget (a lowbit.devices.Budget or a device name).

    `weights` defaults to the file's own types for a GGUF (a .gguf path or a local real model), else Q4_K_M (BF16
    for the transformers engine).

    `context` defaults to 32,768 tokens or the model's trained maximum if smaller; a larger one than that
    maximum is refused unless `force_context` (as vLLM refuses it). On a catalog device the result carries a
    speed estimate (lowbit.planning.speed) for that placement; `host` is the CPU that runs offloaded layers.
    """
    if isinstance(budget, str):
        budget = make_budget(budget)
    if isinstance(users, bool) or not isinstance(users, int) or not 1 <= users <= MAX_SEQUENCES:
        raise LowbitError(f"--users must be an integer from 1 to {MAX_SEQUENCES:,}, got {users!r}")
    costs = Costs(model, budget, weights, kv_k, kv_v, engine, mtp, vision)
    if context is None:
        context = min(DEFAULT_CONTEXT, costs.context_cap())
    context = context_for(costs.cfg, context, force_context)
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= MAX_CONTEXT:
        raise LowbitError(f"--context must be an integer from 1 to {MAX_CONTEXT:,} tokens, got {context!r}")
    need = costs.need(context, users)
    off = costs.placement.offload(context, users)
    if off is None:  # the engine has no offload plan for this budget
        off = ({"layers_on_cpu": 0, "bytes_on_cpu": need.host_bytes} if need.device_bytes <= costs.limit else
               {"layers_on_cpu": None, "bytes_on_cpu": None,
                "note": "no offload plan for this engine or device: it does not fit"})
    assumptions = {"budget": budget.assumption, **costs.engine.assumptions(),
                   "weights": "exact: llama.cpp mix rules x gguf block sizes (the simulator)"
                   if costs.weights != "stored" else costs.plan1.weights_provenance}
    if budget.gpus > 1:
        assumptions["split"] = costs.placement.split_assumption
    spd = None
    if budget.device is not None and budget.device.bandwidth_bytes_s and off.get("layers_on_cpu") is not None:
        p = plan(costs.resolved, costs.weights, kv_k=costs.k.name, kv_v=costs.v.name, context=context,
                 sequences=users, mtp=mtp, vision=vision, engine=costs.engine, force_context=force_context)
        placed = off if (off.get("layers_on_cpu") or off.get("expert_layers_on_cpu")) else None
        spd = estimate(p, budget.device, offload=placed, host=host, gpus=budget.gpus)
        spd.placement = (off.get("llama_args") or "offloaded") if placed else "all on the device"
    return FitResult(
        model=costs.plan1.model, budget=budget, engine=costs.engine.name, weights=costs.weights, kv_k=costs.k.name,
        kv_v=costs.v.name, context=context, users=users, need=need, limit=costs.limit,
        max_context=costs.max_context(users), max_users=costs.max_users(context),
        best_weights=best_weights(costs.resolved, budget, context, users, costs.k.name, costs.v.name, engine, mtp,
                                  vision),
        offload=off, assumptions=assumptions, context_cap=costs.context_cap(), speed=spd,
    )


# ---------------------------------------------------------------------------------------------
# Cheap annotation for `lowbit simulate`
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _by_size() -> tuple[tuple[str, str, str, int], ...]:
    rows = [(d.name, d.klass, d.kind, usable(d)[0]) for d in catalog()]
    return tuple(sorted(rows, key=lambda r: (r[3], r[0])))


def fitting_devices(plan_or_total_bytes: Plan | int, limit: int | None = None) -> list[str]:
    """The smallest fitting device of each class (phone, mac, cpu, consumer-gpu, datacenter-gpu), smallest first.

    A Plan is charged as its engine places it: one pool on unified memory; on a GPU everything but the
    untied tensors the engine keeps in host RAM (llama.cpp: the input embedding table). A plain byte count is charged
    whole everywhere. Usable memory per device is the catalog's estimate (`lowbit devices`).
    """
    if isinstance(plan_or_total_bytes, Plan):
        p = plan_or_total_bytes
        total = on_gpu = p.total_bytes
        if not p.config.tie_word_embeddings:  # a tied model's output copy of the table is on the GPU anyway
            host = p.engine.host_tensors([t.name for t in p.tensors])
            on_gpu -= sum(p.padded(t.bytes) for t in p.tensors if t.name in host)
    else:
        total = on_gpu = int(plan_or_total_bytes)
    seen, out = set(), []
    for name, klass, kind, use in _by_size():
        need = on_gpu if kind == "gpu" else total
        if need <= use and klass not in seen:
            seen.add(klass)
            out.append(name)
    return out[:limit] if limit else out

