"""The device catalog (data in devices.json) and memory budgets: what a workload may allocate.

A device has a vendor memory size (exact, from the spec sheet) and a *usable* size: what is left
after the operating system, driver or platform holds memory back. The usable size is always an
estimate, and `Budget.assumption` names it. `--memory 24GB` (SI) or `24GiB` (binary) gives a budget
with no device; it is taken as usable in full unless a device kind is named with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from importlib import resources

from lowbit.errors import LowbitError
from lowbit.safe_read import short

KINDS = ("phone", "apple", "gpu", "cpu")
UNIFIED = ("phone", "apple", "cpu")  # one memory pool for weights, cache and the host
_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
MAX_MEMORY = 1 << 50  # 1 PiB: far beyond any one machine; guards absurd input


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # phone | apple | gpu | cpu
    klass: str  # phone | mac | consumer-gpu | datacenter-gpu | cpu
    label: str
    memory_bytes: int
    aliases: tuple[str, ...] = ()
    source: str = ""  # where memory_bytes comes from (the vendor's specification)

    @property
    def unified(self) -> bool:
        return self.kind in UNIFIED


@dataclass(frozen=True)
class Budget:
    """Memory a plan may use on one device (one GPU of `gpus` identical ones)."""

    memory_bytes: int  # vendor size (or what --memory said)
    usable_bytes: int
    assumption: str  # how usable_bytes was derived; "exact" only when nothing is held back
    device: Device | None = None
    gpus: int = 1
    unified: bool = True  # one pool (no separate host RAM for llama.cpp's CPU-side buffers)
    extras: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.device.name if self.device else f"memory:{format_bytes(self.memory_bytes)}"


@lru_cache(maxsize=None)
def _raw() -> dict:
    return json.loads(resources.files("lowbit").joinpath("devices.json").read_text())


@lru_cache(maxsize=None)
def catalog() -> tuple[Device, ...]:
    return tuple(
        Device(d["name"], d["kind"], d["class"], d["label"], int(d["memory_bytes"]),
               tuple(d.get("aliases", ())), d["source"])
        for d in _raw()["devices"]
    )


def reserve_rules() -> dict:
    return _raw()["reserve"]


def device(name: str) -> Device:
    key = str(name).strip().lower()
    for d in catalog():
        if key == d.name or key in d.aliases:
            return d
    near = [d.name for d in catalog() if key and (key in d.name or d.name in key)]
    hint = f" (did you mean {', '.join(near[:3])}?)" if near else ""
    raise LowbitError(f"unknown device {name!r}{hint}; `lowbit devices` lists them")


def usable(d: Device) -> tuple[int, str]:
    """Usable bytes of a catalog device and the assumption behind them."""
    rule = reserve_rules()[d.kind]
    if rule["kind"] == "bytes":
        return max(0, d.memory_bytes - int(rule["value"])), rule["why"]
    if rule["kind"] == "fraction":
        return int(d.memory_bytes * rule["value"]), rule["why"]
    frac = rule["large"] if d.memory_bytes > rule["large_from_bytes"] else rule["small"]
    return int(d.memory_bytes * frac), rule["why"]


def parse_memory(text: str | int) -> int:
    """'24GB' -> 24*10**9, '24GiB' -> 24*2**30, '1.5TiB', '512MiB'. A unit is required."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().replace("_", "").replace(" ", "")
        m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)([a-zA-Z]+)", s)
        if not m:
            if re.fullmatch(r"[+-]?\d+(\.\d+)?", s):
                raise LowbitError(f"memory {short(text)} needs a unit, e.g. 24GB (10^9 bytes) or 24GiB (2^30 bytes)")
            raise LowbitError(f"cannot read memory size {short(text)}; write e.g. 24GB or 24GiB")
        number, unit = m.groups()
        unit = unit.lower()
        if unit in ("k", "m", "g", "t"):
            raise LowbitError(f"memory unit {m.group(2)!r} is ambiguous; write {number}{m.group(2).upper()}B "
                              f"(10^n bytes) or {number}{m.group(2).upper()}iB (2^n bytes)")
        if unit not in _UNITS:
            raise LowbitError(f"unknown memory unit {m.group(2)!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
        if len(number) > 24:  # a float of that many digits would overflow; no machine is that large
            raise LowbitError(f"memory {short(text)} is beyond any machine (limit 1 PiB)")
        value = int(Fraction(number) * _UNITS[unit])  # exact
        if Fraction(number) < 0:
            value = -1
    if value <= 0:
        raise LowbitError(f"memory must be positive, got {short(text)}")
    if value > MAX_MEMORY:
        raise LowbitError(f"memory {short(text)} is beyond any machine (limit 1 PiB)")
    return value


def budget(device_name: str | None = None, memory: str | int | None = None, gpus: int = 1) -> Budget:
    """The budget of one device of `gpus` identical ones: from the catalog or from a size."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= 64:
        raise LowbitError(f"--gpus must be an integer from 1 to 64, got {gpus!r}")
    if device_name and memory is not None:
        raise LowbitError("give either --device or --memory, not both")
    if device_name:
        d = device(device_name)
        if gpus > 1 and d.kind != "gpu":
            raise LowbitError(f"--gpus {gpus} splits a model over GPUs; {d.name} is not a GPU ({d.kind})")
        use, why = usable(d)
        return Budget(d.memory_bytes, use, why, d, gpus, unified=d.unified)
    if memory is None:
        raise LowbitError("a memory budget is needed: --device NAME (see `lowbit devices`) or --memory 24GB")
    size = parse_memory(memory)
    return Budget(size, size, "exact: the --memory given, all of it usable (nothing held back)", None, gpus,
                  unified=gpus == 1)


def format_bytes(n: int) -> str:
    """Binary units, 2 decimals: 25769803776 -> '24.00 GiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def listing() -> list[dict]:
    """The catalog as rows (for `lowbit devices` and JSON)."""
    rows = []
    for d in catalog():
        use, why = usable(d)
        rows.append({"name": d.name, "kind": d.kind, "class": d.klass, "label": d.label,
                     "memory_bytes": d.memory_bytes, "usable_bytes": use, "usable_assumption": why,
                     "aliases": list(d.aliases), "source": d.source})
    return rows
