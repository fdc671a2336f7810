"""The bytes a transformers cache really holds: every tensor reachable from it, counted once per storage.

    from lowbit.cache.memory import held_bytes
    held_bytes(cache)   # {"kv_live": ..., "kv_capacity": ..., "state": ..., "other": ..., "tensors": ...}

Works for transformers' own caches (DynamicCache: `keys`/`values`, linear-attention `conv_states`/
`recurrent_states`) and for QuantizedKVCache (the packed stores, whose growth buffers are counted at their
capacity beside the bytes in use, and the codecs' rotation matrices and kernel tables under `other`).
Storage bytes, not allocator blocks: torch's caching allocator rounds each block up (to 512 bytes, and
large ones to 2 MiB segments), which `torch.cuda.memory_allocated` sees and this does not.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.cache.stores import TokenGroupStore, VectorStore

_STATE = ("conv_states", "recurrent_states")
_KV = ("keys", "values")
_SKIP = ("text_config", "config")  # the cache keeps the model's config: no tensors of its own


def _children(obj):
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"):
        mod = type(obj).__module__ or ""
        if mod.startswith(("lowbit.", "transformers.cache_utils")) or dataclasses.is_dataclass(obj):
            return [(k, v) for k, v in vars(obj).items() if k not in _SKIP]
    return []


def _kind(path: tuple[str, ...]) -> str:
    if any(p in _STATE for p in path):
        return "state"
    if any(p in ("k_store", "v_store") for p in path):
        return "kv" if path[-1] in ("_buf", "packed", "groups", "residual") else "other"
    if path and path[-1] in _KV:
        return "kv"
    return "other"


def held_bytes(cache) -> dict:
    """Bytes of the tensors a cache holds, by kind: `kv_live` (K/V bytes in use), `kv_capacity` (what the K/V
    buffers hold, grown ahead of use), `state` (linear-attention conv and recurrent states), `other` (codec
    constants and anything else), and `tensors` (how many distinct storages were counted)."""
    seen_obj: set[int] = set()
    storages: dict[tuple, tuple[int, str]] = {}
    live = 0

    def visit(obj, path):
        nonlocal live
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            key = (obj.device.type, obj.device.index, st.data_ptr(), st.nbytes())
            if st.nbytes() and key not in storages:
                storages[key] = (st.nbytes(), _kind(path))
            return
        if id(obj) in seen_obj or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return
        seen_obj.add(id(obj))
        if isinstance(obj, VectorStore) and obj.packed is not None:
            live += obj.packed.numel()
        elif isinstance(obj, TokenGroupStore):
            live += obj.nbytes()
        for name, child in _children(obj):
            visit(child, (*path, name))

    for i, layer in enumerate(getattr(cache, "layers", [])):
        before = live
        visit(layer, (str(i),))
        if live == before:  # transformers' own layers: the tensors are exactly as long as the tokens held
            live += sum(t.numel() * t.element_size() for name in _KV
                        if isinstance(t := getattr(layer, name, None), torch.Tensor))
    out = {"kv_live": live, "kv_capacity": 0, "state": 0, "other": 0}
    for nbytes, kind in storages.values():
        out["kv_capacity" if kind == "kv" else kind] += nbytes
    out["tensors"] = len(storages)
    return out
