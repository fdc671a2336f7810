"""lowbit: exact memory simulation and measured quality for low-bit LLM weights and KV caches."""

__version__ = "0.1.0"
