"""lowbit: exact memory simulation and measured quality for low-bit LLM weights and KV caches.

    >>> import lowbit
    >>> p = lowbit.plan("qwen3.5-122b-a10b", weights="Q1_0", kv="turbo3", context=262144)
    >>> p.total_bytes, p.kv_bytes

The API is imported lazily so that `import lowbit` stays instant and never pulls torch.
"""

__version__ = "0.1.0"

__all__ = ["plan", "simulate", "resolve", "Plan", "Scenario", "LowbitError"]


def __getattr__(name: str):
    if name in ("plan", "Plan", "Scenario"):
        from lowbit.planning import planner

        return getattr(planner, name)
    if name == "simulate":
        from lowbit.planning.simulate import simulate

        return simulate
    if name == "resolve":
        from lowbit.models.catalog import resolve

        return resolve
    if name == "LowbitError":
        from lowbit.errors import LowbitError

        return LowbitError
    raise AttributeError(name)
