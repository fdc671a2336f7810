"""simulate(): several models x several scenarios, the table the seed document tried to make."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lowbit.models.catalog import QWEN35_FAMILY, resolve
from lowbit.planning.engines import Engine, engine_model
from lowbit.planning.fit import fitting_devices
from lowbit.planning.planner import Plan, plan
from lowbit.planning.scenario import ONEBIT_TURBO, TODAY, Scenario


@dataclass(repr=False)
class Simulation:
    context: int
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

    def get(self, model: str, scenario: str) -> Plan:
        return next(p for p in self.plans if p.model == model and p.scenario.name == scenario)

    def ratio(self, model: str) -> float:
        """Total bytes of the first scenario over the last one (today / 1-bit + TurboQuant)."""
        first, last = self.get(model, self.scenarios[0].name), self.get(model, self.scenarios[-1].name)
        return first.total_bytes / last.total_bytes

    def fitting_devices(self) -> dict[tuple[str, str], list[str]]:
        """(model, scenario name) -> the smallest device of each class that holds that plan."""
        return {(p.model, p.scenario.name): fitting_devices(p) for p in self.plans}

    def to_json(self) -> dict:
        return {
            "context": self.context,
            "sequences": self.sequences,
            "scenarios": [s.to_json() for s in self.scenarios],
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
    context: int = 262_144,
    sequences: int = 1,
    pure: bool = False,
    mtp: bool = False,
    vision: bool = False,
    engine: str | Engine = "llama.cpp",
) -> Simulation:
    """Every model (default: the Qwen3.5 family) under every scenario (default: today and 1-bit + TurboQuant).

    `pure` plans every scenario as llama-quantize --pure would.
    """
    scenarios = list(scenarios or [TODAY, ONEBIT_TURBO])
    eng = engine_model(engine)
    plans = []
    for name in models or QWEN35_FAMILY:
        resolved = resolve(name)
        for s in scenarios:
            plans.append(plan(resolved, replace(s, pure=True) if pure else s, context=context, sequences=sequences,
                              mtp=mtp, vision=vision, engine=eng))
    return Simulation(context, sequences, scenarios, plans)
