"""Fit and plan: will a model run on a device, and how far can it be pushed?

Built on the exact simulator: `Costs` computes everything that does not depend on the context or the
number of users once (weights, from the planner, tensor by tensor), and `Costs.need(context, users)`
adds the engine's KV cache, recurrent state and runtime buffers for one device. Every inverse solver
here (largest context, most users, best weight format, layers/experts to keep in CPU RAM) searches
that forward function, so an answer is exactly as good as the simulator: the largest context fits
and one token more does not (tests/test_fit_properties.py).

Placement follows the engine:
- llama.cpp on a GPU keeps token_embd in host RAM; the rest, with each layer's KV and state, goes to
  the GPU; with N GPUs layers are split evenly (llama.cpp's default layer split). A model that does
  not fit keeps MoE expert tensors of the first layers in CPU RAM first (`--n-cpu-moe`, as
  llama.cpp's --fit does), then whole layers (`-ngl`).
- On unified memory (Apple, phones, CPU RAM) everything is one pool.
- vLLM: tensor parallel over N GPUs (vLLM's sharding, KV heads replicated when fewer than GPUs),
  the instance capped at gpu_memory_utilization of each GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from lowbit.devices import Budget, budget as make_budget, catalog, usable
from lowbit.errors import LowbitError
from lowbit.formats.kv import kv_format
from lowbit.formats.weights import aligned
from lowbit.models.catalog import QWEN35_FAMILY, ResolvedModel, resolve
from lowbit.models.tensors import EXPERTS
from lowbit.planning.engines import VLLM, LlamaCpp, engine_model, shard_config
from lowbit.planning.planner import MAX_CONTEXT, MAX_SEQUENCES, Plan, plan

# Weight mixes tried by best_weights, any order: they are ranked by their real size for the model.
CANDIDATE_MIXES = (
    "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS", "Q3_K_L", "Q3_K_M", "IQ3_M",
    "Q3_K_S", "IQ3_XS", "IQ3_XXS", "Q2_K", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "Q1_0",
)
DEFAULT_CONTEXT = 32_768  # a sane default: "does it fit at the model maximum" is rarely the question
_LAYER = re.compile(r"^(?:blk|model\.layers|layers)\.(\d+)\.")


@dataclass(frozen=True)
class Need:
    """Bytes on the most loaded device, and in host RAM, for one context and user count."""

    device_bytes: int
    host_bytes: int
    weights_bytes: int  # on that device
    kv_bytes: int
    state_bytes: int
    runtime_bytes: int


def _layer_of(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


class Costs:
    """A model under one weight mix, KV formats, engine and device budget; need() is cheap."""

    def __init__(self, model: str | ResolvedModel, budget: Budget, weights: str = "Q4_K_M", kv_k: str = "f16",
                 kv_v: str | None = None, engine: str = "llama.cpp", mtp: bool = False, vision: bool = False,
                 vllm: VLLM | None = None, stored: list | None = None):
        self.resolved = resolve(model) if isinstance(model, str) else model
        self.cfg = self.resolved.config
        self.budget = budget
        self.weights, self.mtp = weights.upper(), mtp
        self.k, self.v = kv_format(kv_k), kv_format(kv_v or kv_k)
        eng = engine_model(engine)
        self.engine = eng.name
        self.plan1: Plan = plan(self.resolved, weights, kv_k=self.k.name, kv_v=self.v.name, context=1, sequences=1,
                                mtp=mtp, vision=vision)
        # `stored`: a checkpoint's own tensors (lowbit.models.safetensors) instead of the mix's, unpadded
        self.tensors = stored if stored is not None else self.plan1.tensors
        self.pad = (lambda n: n) if stored is not None else aligned
        self.weights_total = sum(self.pad(t.bytes) for t in self.tensors)
        if stored is not None:
            self.weights = "stored"
        gpus = budget.gpus
        if isinstance(eng, VLLM):
            if budget.device is not None and budget.device.kind != "gpu":
                raise LowbitError(f"the vLLM engine model is for GPUs; {budget.device.name} is not one "
                                  f"({budget.device.kind}); use --engine llama.cpp")
            self.vllm = vllm or VLLM(tp=gpus)
            self.rank_cfg = shard_config(self.cfg, gpus)
            self.limit = self.vllm.pool_limit(budget.memory_bytes)
            self.rank_weights = sum(self._rank_bytes(t) for t in self.tensors)
        else:
            self.llama = LlamaCpp()
            self.limit = budget.usable_bytes
            self.host_only = sum(self.pad(t.bytes) for t in self.tensors
                                 if t.name in self.llama.host_tensors([t.name]))
            n_blocks = self.cfg.num_layers + (self.cfg.mtp_layers if mtp else 0)
            self.layer_dense = [0] * n_blocks  # per block: weights other than routed experts
            self.layer_experts = [0] * n_blocks
            self.outside = 0  # output head, final norm, ...: with the last layer's device
            for t in self.tensors:
                i = _layer_of(t.name)
                if t.name == "token_embd.weight":
                    if self.cfg.tie_word_embeddings:
                        self.outside += self.pad(t.bytes)  # the duplicated output copy on the device
                elif 0 <= i < n_blocks and t.kind != "vision_tower":
                    (self.layer_experts if t.kind == EXPERTS else self.layer_dense)[i] += self.pad(t.bytes)
                else:
                    self.outside += self.pad(t.bytes)

    # --- per-rank weights under vLLM tensor parallelism ------------------------------------------
    def _rank_bytes(self, t) -> int:
        tp = self.budget.gpus
        if tp == 1 or len(t.shape) == 1 or "ffn_gate_inp" in t.name:
            return self.pad(t.bytes)  # replicated: vectors and routers
        if re.search(r"attn_(k|v)\.weight$", t.name):
            full = max(self.cfg.num_kv_heads)
            per_rank = max(1, full // tp)
            return self.pad(-(-t.bytes * per_rank // full))
        return self.pad(-(-t.bytes // tp))

    # --- the forward function every solver searches --------------------------------------------
    def need(self, context: int, users: int = 1) -> Need:
        if self.engine == "vllm":
            a = self.vllm.allocate(self.rank_cfg, self.k, self.v, context, users, self.mtp)
            w = self.rank_weights
            return Need(w + a.kv_bytes + a.state_bytes + a.runtime_bytes, 0, w, a.kv_bytes, a.state_bytes,
                        a.runtime_bytes)
        a = self.llama.allocate(self.cfg, self.k, self.v, context, users, self.mtp)
        w_all = self.weights_total
        if self.budget.unified:
            return Need(w_all + a.kv_bytes + a.state_bytes + a.runtime_bytes, 0, w_all, a.kv_bytes, a.state_bytes,
                        a.runtime_bytes)
        cache = self.llama.layer_cache_bytes(self.cfg, self.k, self.v, context, users, self.mtp)
        n = self.budget.gpus
        per_gpu = [a.runtime_bytes] * n  # estimated: each GPU holds its own compute buffer
        weights = [0] * n
        for i, c in enumerate(cache):
            d = min(n - 1, i * n // len(cache))
            per_gpu[d] += self.layer_dense[i] + self.layer_experts[i] + c
            weights[d] += self.layer_dense[i] + self.layer_experts[i]
        per_gpu[-1] += self.outside
        weights[-1] += self.outside
        worst = max(range(n), key=per_gpu.__getitem__)
        return Need(per_gpu[worst], self.host_only, weights[worst], a.kv_bytes, a.state_bytes, a.runtime_bytes)

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

    # --- offload (llama.cpp, one GPU) ---------------------------------------------------------
    def offload(self, context: int, users: int = 1) -> dict:
        """Experts of the first layers to CPU first (--n-cpu-moe), then whole layers (-ngl), as llama.cpp --fit."""
        n = len(self.layer_dense)
        cache = self.llama.layer_cache_bytes(self.cfg, self.k, self.v, context, users, self.mtp)
        runtime = self.llama.allocate(self.cfg, self.k, self.v, 1, users).runtime_bytes
        everything = self.outside + sum(self.layer_dense) + sum(self.layer_experts) + sum(cache)

        def on_gpu(ngl: int, cpu_moe: int) -> int:
            b = runtime + (self.outside if ngl == n else 0)
            for i in range(n - ngl, n):
                b += self.layer_dense[i] + cache[i] + (self.layer_experts[i] if i >= cpu_moe else 0)
            return b

        def result(ngl: int, cpu_moe: int, note: str) -> dict:
            gpu = on_gpu(ngl, cpu_moe)
            args = [f"-ngl {ngl if ngl < n else 99}"] + ([f"--n-cpu-moe {cpu_moe}"] if cpu_moe else [])
            return {"layers_on_cpu": n - ngl, "expert_layers_on_cpu": cpu_moe, "gpu_layers": ngl,
                    "bytes_on_gpu": gpu, "bytes_on_cpu": self.host_only + everything - (gpu - runtime),
                    "llama_args": " ".join(args), "override_tensor": _ot_pattern(cpu_moe) if cpu_moe else "",
                    "note": note}

        if on_gpu(n, 0) <= self.limit:
            return result(n, 0, "everything but token_embd on the GPU")
        has_experts = any(self.layer_experts)
        if has_experts and on_gpu(n, n) <= self.limit:
            k = _smallest(lambda m: on_gpu(n, m) <= self.limit, 0, n)
            return result(n, k, f"routed experts of the first {k} layers in CPU RAM, everything else on the GPU")
        cpu_moe = n if has_experts else 0
        ngl = largest(lambda g: on_gpu(g, cpu_moe) <= self.limit, 0, n)
        if ngl is None:
            return result(0, cpu_moe, "even the compute buffer does not fit on the GPU: CPU only")
        return result(ngl, cpu_moe, f"{n - ngl} of {n} layers in CPU RAM" +
                      (", all routed experts in CPU RAM" if cpu_moe else ""))


def _ot_pattern(layers: int) -> str:
    ids = "|".join(str(i) for i in range(layers))
    return rf"blk\.({ids})\.ffn_(up|down|gate)_exps\.weight=CPU"


def largest(pred, lo: int, hi: int) -> int | None:
    """Largest x in [lo, hi] with pred(x), for pred true up to some point and false after; None if pred(lo) fails."""
    if not pred(lo):
        return None
    if pred(hi):
        return hi
    while hi - lo > 1:  # pred(lo) and not pred(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if pred(mid) else (lo, mid)
    return lo


def _smallest(pred, lo: int, hi: int) -> int:
    """Smallest x in [lo, hi] with pred(x), for pred false up to some point and true after (pred(hi) holds)."""
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid + 1, hi)
    return lo


# ---------------------------------------------------------------------------------------------
# The answers `lowbit fit` prints
# ---------------------------------------------------------------------------------------------


@dataclass
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
            "max_context": self.max_context,
            "max_context_limited_by": self.limited_by,
            "max_users": self.max_users,
            "best_weights": self.best_weights,
            "offload": self.offload,
            "assumptions": self.assumptions,
        }


def best_weights(model: str | ResolvedModel, budget: Budget, context: int, users: int = 1, kv_k: str = "f16",
                 kv_v: str | None = None, engine: str = "llama.cpp", mtp: bool = False, vision: bool = False,
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


def fit(model: str | ResolvedModel, budget: Budget, weights: str = "Q4_K_M", kv_k: str = "f16",
        kv_v: str | None = None, context: int | None = None, users: int = 1, engine: str = "llama.cpp",
        mtp: bool = False, vision: bool = False, stored: list | None = None) -> FitResult:
    """Everything `lowbit fit` answers for one model on one budget."""
    if isinstance(users, bool) or not isinstance(users, int) or not 1 <= users <= MAX_SEQUENCES:
        raise LowbitError(f"--users must be an integer from 1 to {MAX_SEQUENCES:,}, got {users!r}")
    costs = Costs(model, budget, weights, kv_k, kv_v, engine, mtp, vision, stored=stored)
    if context is None:
        context = min(DEFAULT_CONTEXT, costs.context_cap())
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= MAX_CONTEXT:
        raise LowbitError(f"--context must be an integer from 1 to {MAX_CONTEXT:,} tokens, got {context!r}")
    need = costs.need(context, users)
    off = {"layers_on_cpu": 0, "bytes_on_cpu": need.host_bytes}
    if costs.engine == "llama.cpp" and not budget.unified and budget.gpus == 1:
        off = costs.offload(context, users)
    elif need.device_bytes > costs.limit:
        off = {"layers_on_cpu": None, "bytes_on_cpu": None,
               "note": "no offload plan for this engine or device: it does not fit"}
    eng = costs.vllm if costs.engine == "vllm" else costs.llama
    assumptions = {"budget": budget.assumption, **eng.assumptions(),
                   "weights": "exact: llama.cpp mix rules x gguf block sizes (the simulator)" if stored is None else
                   "exact: the checkpoint's safetensors headers (dtype x shape), as stored"}
    if costs.engine == "vllm" and budget.gpus > 1:
        assumptions["split"] = ("estimated: vLLM tensor parallel: matrices split over the GPUs, vectors and routers "
                                "replicated, KV heads split or replicated")
    elif budget.gpus > 1:
        assumptions["split"] = "llama.cpp layer split: layers divided evenly, each with its KV; output on the last GPU"
    return FitResult(
        model=costs.plan1.model, budget=budget, engine=costs.engine, weights=costs.weights, kv_k=costs.k.name,
        kv_v=costs.v.name, context=context, users=users, need=need, limit=costs.limit,
        max_context=costs.max_context(users), max_users=costs.max_users(context),
        best_weights=best_weights(costs.resolved, budget, context, users, costs.k.name, costs.v.name, engine, mtp,
                                  vision),
        offload=off, assumptions=assumptions, context_cap=costs.context_cap(),
    )


def family(budget: Budget, weights: str = "Q4_K_M", kv_k: str = "f16", kv_v: str | None = None,
           context: int | None = None, users: int = 1, engine: str = "llama.cpp",
           models: list[str] | None = None) -> list[FitResult]:
    return [fit(m, budget, weights, kv_k, kv_v, context, users, engine) for m in models or QWEN35_FAMILY]


# ---------------------------------------------------------------------------------------------
# Cheap annotation for `lowbit simulate`
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _by_size() -> tuple[tuple[str, str, str, int], ...]:
    rows = [(d.name, d.klass, d.kind, usable(d)[0]) for d in catalog()]
    return tuple(sorted(rows, key=lambda r: (r[3], r[0])))


def fitting_devices(plan_or_total_bytes: Plan | int, limit: int | None = None) -> list[str]:
    """The smallest fitting device of each class (phone, mac, cpu, consumer-gpu, datacenter-gpu), smallest first.

    A Plan is charged as llama.cpp places it: one pool on unified memory; on a GPU everything but the
    untied input embedding table (which llama.cpp keeps in host RAM). A plain byte count is charged
    whole everywhere. Usable memory per device is the catalog's estimate (`lowbit devices`).
    """
    if isinstance(plan_or_total_bytes, Plan):
        total = plan_or_total_bytes.total_bytes
        on_gpu = total
        if not plan_or_total_bytes.config.tie_word_embeddings and plan_or_total_bytes.engine == "llama.cpp":
            on_gpu -= sum(aligned(t.bytes) for t in plan_or_total_bytes.tensors if t.name == "token_embd.weight")
    else:
        total = on_gpu = int(plan_or_total_bytes)
    seen, out = set(), []
    for name, klass, kind, use in _by_size():
        need = on_gpu if kind == "gpu" else total
        if need <= use and klass not in seen:
            seen.add(klass)
            out.append(name)
    return out[:limit] if limit else out


def budget(device: str | None = None, memory: str | int | None = None, gpus: int = 1) -> Budget:
    return make_budget(device, memory, gpus)
