"""simulate(): several models x several scenarios, the table the seed document tried to make."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.models.catalog import QWEN35_FAMILY, resolve
from lowbit.planning.planner import ONEBIT_TURBO, TODAY, Plan, Scenario, plan


@dataclass
class Simulation:
    context: int
    sequences: int
    scenarios: list[Scenario]
    plans: list[Plan]  # model-major: for each model, one plan per scenario

    def models(self) -> list[str]:
        seen: list[str] = []
        for p in self.plans:
            if p.model not in seen:
                seen.append(p.model)
        return seen

    def get(self, model: str, scenario: str) -> Plan:
        return next(p for p in self.plans if p.model == model and p.scenario.name == scenario)

    def ratio(self, model: str) -> float:
        """Total bytes of the first scenario over the last one (today / 1-bit + TurboQuant)."""
        first, last = self.get(model, self.scenarios[0].name), self.get(model, self.scenarios[-1].name)
        return first.total_bytes / last.total_bytes

    def to_json(self) -> dict:
        return {
            "context": self.context,
            "sequences": self.sequences,
            "scenarios": [{"name": s.name, "weights": s.weights, "kv_k": s.kv_k, "kv_v": s.kv_v, "pure": s.pure}
                          for s in self.scenarios],
            "rows": [
                {
                    "model": p.model,
                    "scenario": p.scenario.name,
                    "params": p.params_total,
                    "params_active": p.params_active,
                    "weights_bytes": p.weights_bytes,
                    "kv_bytes": p.kv_bytes,
                    "state_bytes": p.state_bytes,
                    "runtime_bytes": p.runtime_bytes,
                    "total_bytes": p.total_bytes,
                }
                for p in self.plans
            ],
            "ratios": {m: round(self.ratio(m), 4) for m in self.models()},
            "engine": self.plans[0].engine if self.plans else "llama.cpp",
            "provenance": self.plans[0].provenance() if self.plans else {},
        }


def simulate(
    models: list[str] | None = None,
    scenarios: list[Scenario] | None = None,
    context: int = 262_144,
    sequences: int = 1,
    pure: bool = False,
    mtp: bool = False,
    vision: bool = False,
    engine: str = "llama.cpp",
) -> Simulation:
    scenarios = scenarios or [TODAY, ONEBIT_TURBO]
    plans = []
    for name in models or QWEN35_FAMILY:
        resolved = resolve(name)
        for s in scenarios:
            plans.append(plan(resolved, s.weights, kv_k=s.kv_k, kv_v=s.kv_v, context=context, sequences=sequences,
                              pure=pure or s.pure, mtp=mtp, vision=vision, scenario_name=s.name, engine=engine))
    return Simulation(context, sequences, list(scenarios), plans)
