"""A scenario: the formats one column of a simulation stores a model in (a weight mix, K and V cache formats)."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import LowbitError
from lowbit.formats.kv import KVFormat, kv_format
from lowbit.formats.weights import Mix, mix


@dataclass(frozen=True, repr=False)
class Scenario:
    """Resolved, hence valid, formats: build one with `Scenario.of` (names or objects) or `Scenario.parse`."""

    name: str
    mix: Mix  # a llama.cpp mix (Q4_K_M, Q1_0, ...)
    k: KVFormat
    v: KVFormat
    pure: bool = False  # every tensor at the mix's default type (llama-quantize --pure)

    @classmethod
    def of(cls, weights: str | Mix = "Q4_K_M", kv_k: str | KVFormat = "f16", kv_v: str | KVFormat | None = None,
           name: str = "", pure: bool = False) -> Scenario:
        """Formats by name or object; V defaults to K's format; the name defaults to `MIX+K/V`."""
        m = weights if isinstance(weights, Mix) else mix(weights)
        k = kv_k if isinstance(kv_k, KVFormat) else kv_format(kv_k)
        v = k if kv_v is None else kv_v if isinstance(kv_v, KVFormat) else kv_format(kv_v)
        return cls(name or f"{m.name}+{k.name}/{v.name}", m, k, v, pure)

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """NAME=WEIGHTS+KV or NAME=WEIGHTS+KVK/KVV, e.g. `mine=Q2_K+q8_0/turbo3`; or a preset's name
        (today, 1bit-turbo, bonsai)."""
        if "=" not in text and text.strip().lower() in PRESETS:
            return PRESETS[text.strip().lower()]
        name, sep, rest = text.partition("=")
        weights, plus, kv = rest.partition("+")
        if not sep or not plus or not name or not weights or not kv:
            raise LowbitError(f"--scenario wants NAME=WEIGHTS+KV (e.g. today=Q4_K_M+f16) or a preset "
                              f"({', '.join(PRESETS)}), got {text!r}")
        k, _, v = kv.partition("/")
        return cls.of(weights, k, v or None, name=name)

    def kv_label(self) -> str:
        """`f16` when K and V share a format, else `q8_0/turbo3`."""
        return self.k.name if self.k == self.v else f"{self.k.name}/{self.v.name}"

    def label(self) -> str:
        """`name (MIX+KV)`, as table headers print a scenario."""
        return f"{self.name} ({self.mix.name}{' pure' if self.pure else ''}+{self.kv_label()})"

    def to_json(self) -> dict:
        return {"name": self.name, "weights": self.mix.name, "kv_k": self.k.name, "kv_v": self.v.name,
                "pure": self.pure}

    def __repr__(self) -> str:
        return f"Scenario({self.name!r}, {self.mix.name}+{self.k.name}/{self.v.name}{', pure' if self.pure else ''})"


TODAY = Scenario.of("Q4_K_M", "f16", name="today")
ONEBIT_TURBO = Scenario.of("Q1_0", "turbo3", name="1bit-turbo")
# PrismML's Bonsai models: every weight tensor Q1_0, embeddings and output head included (llama-quantize --pure).
BONSAI = Scenario.of("Q1_0", "f16", name="bonsai", pure=True)
PRESETS = {s.name: s for s in (TODAY, ONEBIT_TURBO, BONSAI)}
