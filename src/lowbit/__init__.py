"""lowbit: exact memory simulation and measured quality for low-bit LLM weights and KV caches.

    >>> import lowbit
    >>> p = lowbit.plan("qwen3.5-122b-a10b", weights="Q1_0", kv="turbo3", context=262144)
    >>> p.total_bytes, p.kv_bytes
    >>> lowbit.fit("qwen3.5-27b", "rtx-4090").max_context

The API is imported lazily so that `import lowbit` stays instant and never pulls torch. No subpackage
shares a name with an API function (the planner lives in lowbit.planning), so importing one never
replaces the function on this module.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["plan", "simulate", "fit", "resolve", "Plan", "Scenario", "LowbitError"]

_API = {
    "plan": "lowbit.planning.planner",
    "Plan": "lowbit.planning.planner",
    "Scenario": "lowbit.planning.scenario",
    "simulate": "lowbit.planning.simulate",
    "fit": "lowbit.planning.fit",
    "resolve": "lowbit.models.catalog",
    "LowbitError": "lowbit.errors",
}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
