"""simulate(): several models x several scenarios, the table the seed document tried to make."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lowbit.errors import LowbitError
from lowbit.models.catalog import QWEN35_FAMILY, resolve
from lowbit.planning.engines import Engine, engine_model
from lowbit.planning.fit import fitting_devices
from lowbit.planning.planner import DEFAULT_CONTEXT, FORCE_HINT, Plan, plan
from lowbit.planning.scenario import ONEBIT_TURBO, TODAY, Scenario
from lowbit.planning.speed import Speed, on_device


@dataclass(repr=False)
class Simulation:
    context: int  # asked for (or the default); a model whose trained maximum is smaller is planned at that
    sequences: int
    scenarios: list[Scenario]
    plans: list[Plan]  # model-major: for each model, one plan per scenario

    def __repr__(self) -> str:
        return (f"<Simulation {len(self.models())} model(s) x {', '.join(s.name for s in self.scenarios)} "
                f"at {self.context:,} tokens x {self.sequences}>")

    def models(self) -> list[str]:
        seen: list[str] = []
        for p in self.plans:
            if p.model not in seen:
                seen.append(p.model)
        return seen

    def shortened(self) -> dict[str, int]:
        """Models planned at less than `context` (their trained maximum, as no context was given)."""
        return {p.model: p.context for p in self.plans if p.context != self.context}

    def get(self, model: str, scenario: str) -> Plan:
        return next(p for p in self.plans if p.model == model and p.scenario.name == scenario)

    def ratio(self, model: str) -> float:
        """Total bytes of the first scenario over the last one (today / 1-bit + TurboQuant)."""
        first, last = self.get(model, self.scenarios[0].name), self.get(model, self.scenarios[-1].name)
        return first.total_bytes / last.total_bytes

    def fitting_devices(self) -> dict[tuple[str, str], list[str]]:
        """(model, scenario name) -> the smallest device of each class that holds that plan."""
        return {(p.model, p.scenario.name): fitting_devices(p) for p in self.plans}

    def speeds(self, devices: list[str], host: str | None = None) -> dict[tuple[str, str, str], Speed]:
        """(model, scenario name, device) -> the decode/prefill estimate, placed as `fit` would place it."""
        return {(p.model, p.scenario.name, d): on_device(p, d, host=host) for p in self.plans for d in devices}

    def to_json(self) -> dict:
        return {
            "context": self.context,
            "sequences": self.sequences,
            "scenarios": [s.to_json() for s in self.scenarios],
            "rows": [
                {
                    "model": p.model,
                    "scenario": p.scenario.name,
                    "context": p.context,
                    "params": p.params_total,
                    "params_active": p.params_active,
                    "weights_bytes": p.weights_bytes,
                    "kv_bytes": p.kv_bytes,
                    "state_bytes": p.state_bytes,
                    "runtime_bytes": p.runtime_bytes,
                    "total_bytes": p.total_bytes,
                    "file_bytes": p.file_bytes,
                }
                for p in self.plans
            ],
            "ratios": {m: round(self.ratio(m), 4) for m in self.models()},
            "engine": self.plans[0].engine.name if self.plans else "llama.cpp",
            "provenance": self.plans[0].provenance() if self.plans else {},
        }


def simulate(
    models: list[str] | None = None,
    scenarios: list[Scenario] | None = None,
    context: int | None = None,
    sequences: int = 1,
    pure: bool = False,
    mtp: bool = False,
    vision: bool = False,
    engine: str | Engine = "llama.cpp",
    force_context: bool = False,
) -> Simulation:
    """Every model (default: the Qwen3.5 family) under every scenario (default: today and 1-bit + TurboQuant).

    `pure` plans every scenario as llama-quantize --pure would. Without a `context`, each model is planned
    at 262,144 tokens or its trained maximum if smaller; a `context` beyond a model's maximum is refused,
    naming every such model, unless `force_context`.
    """
    scenarios = list(scenarios or [TODAY, ONEBIT_TURBO])
    eng = engine_model(engine)
    resolved = [resolve(name) for name in models or QWEN35_FAMILY]
    if context is not None and not force_context:
        over = [r.config for r in resolved if r.config.max_context and context > r.config.max_context]
        if over:
            names = ", ".join(f"{c.name} ({c.max_context:,}: {c.max_context_from})" for c in over)
            raise LowbitError(f"context {context:,} is beyond the trained maximum of {names}; {FORCE_HINT}")
    plans = []
    for r in resolved:
        for s in scenarios:
            plans.append(plan(r, replace(s, pure=True) if pure else s, context=context, sequences=sequences,
                              mtp=mtp, vision=vision, engine=eng, force_context=force_context))
    return Simulation(DEFAULT_CONTEXT if context is None else context, sequences, scenarios, plans)
