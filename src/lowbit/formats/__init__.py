"""Formats as data: weight types and mixes (llama.cpp/gguf), KV-cache formats (llama.cpp, fp8, TurboQuant)."""

from lowbit.formats.kv import KV_FORMATS, KVFormat, kv_format
from lowbit.formats.weights import MIXES, WEIGHT_TYPES, Mix, WeightType, mix, weight_type

__all__ = ["KV_FORMATS", "KVFormat", "kv_format", "MIXES", "WEIGHT_TYPES", "Mix", "WeightType", "mix", "weight_type"]
