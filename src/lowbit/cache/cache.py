"""A transformers Cache whose layers keep K and V as packed bytes in any lowbit KV format.

    from lowbit.cache import QuantizedKVCache, cache_kwarg
    cache = QuantizedKVCache(model.config, kv_k="q8_0", kv_v="turbo3", boundary=2)
    model(input_ids, use_cache=True, **{cache_kwarg(model): cache})  # `cache=` since transformers 5.2x,
                                                                      # `past_key_values=` before

Each layer holds one store for K and one for V (formats may differ, per layer too: `boundary=n`
keeps the first and last n layers that hold K/V in f16, as vLLM's boundary protection; `per_layer={i: (k, v)}`
overrides any layer). A store appends new tokens as real uint8 bytes in the format's layout
(`nbytes()` is exactly `KVFormat.vector_bytes(head_dim)` per vector; KIVI keys also hold up to 31
tokens in fp16 until their group of 32 is complete, as KIVI's residual does).

Attention: `update()` returns K and V for the model's own attention. The bytes go in and come out
through a backend chosen by device type (`lowbit.cache.backends`); the torch backend packs on store and
dequantizes the whole layer on load, so every attention reads values decoded from the stored bytes, the new
tokens' own K/V included (decode-time semantics, also during prefill).

Fused decode attention (`fused_attention=True`, with the model's attention set to "lowbit_turbo":
`lowbit.cache.attention.enable(model)`): when a full-attention layer gets at most FUSED_MAX_NEW new tokens,
update() stores them, records a pending fused step for that layer index, and returns empty K/V; the attention
function, called next by the same layer, takes the step with `fused_cache().take_fused_step(module.layer_idx)`
and reads the packed stores through `lowbit.kernels.decode_attention`. Every decode step (at most
FUSED_MAX_NEW new tokens) is counted: `fused_steps` read the packed bytes, `dense_fallbacks` attended densely
(a sliding-window layer, a format no decode kernel reads, the model's attention not being "lowbit_turbo",
a padding mask...), with the reasons in `fallback_reasons` and a warning the first time each reason occurs.

Linear-attention layers (Gated DeltaNet in Qwen3.5, "linear_attention" in the config's layer_types) get
transformers' own layer (`LinearAttentionLayer`), so their conv and recurrent states are kept exactly as
DynamicCache keeps them (the model's dtype for the conv window, the kernel's dtype, float32, for the recurrent
state); the KV formats apply to attention layers only, as llama.cpp quantizes only the attention cache of its
hybrids. `state_nbytes()` counts those states, `nbytes()` the packed K/V.

Sliding-window layers (Gemma 3) keep the last `sliding_window - 1` tokens like transformers'
DynamicSlidingWindowLayer (KIVI keys drop whole groups only, so a few more may stay).
The cache is not croppable (as transformers' own quantized caches): rolling back stored bytes
would need the pre-quantization values.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from collections import Counter

import torch
from transformers.cache_utils import (DYNAMIC_LAYER_TYPE_MAPPING, Cache, DynamicLayer, LinearAttentionCacheLayerMixin,
                                      get_layer_types_and_kwargs)

from lowbit import kernels
from lowbit.cache.backends import backend_for
from lowbit.cache.stores import make_store
from lowbit.errors import LowbitError
from lowbit.formats.kv import KVSpec, parse_kv_spec

LINEAR_TYPES = ("linear_attention", "conv")  # layer types that hold a conv/recurrent state, no K/V
ATTENTION = "lowbit_turbo"  # the attention implementation that reads fused steps (lowbit.cache.attention)
FUSED_MAX_NEW = 16  # new tokens per step that take the fused decode path (more is prefill: dense K/V)


class _Active(threading.local):
    cache: "QuantizedKVCache | None" = None


_ACTIVE = _Active()


def fused_cache() -> "QuantizedKVCache | None":
    """The cache that last left a fused decode step for the attention function in this thread (a layer's
    update and its attention run back to back on one thread)."""
    return _ACTIVE.cache


def cache_kwarg(model) -> str:
    """The forward argument that takes the cache: transformers renamed past_key_values to cache (5.2x); the old
    name then still works with a warning, a new name passed to an older model is swallowed by its **kwargs."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _layer_types(config) -> tuple[list[str], list[dict]]:
    """Layer types and per-layer kwargs; transformers before 5.2x returns one kwargs dict for all layers."""
    types, kwargs = get_layer_types_and_kwargs(config)
    return list(types), [kwargs] * len(types) if isinstance(kwargs, dict) else list(kwargs)


class QuantizedKVLayer(DynamicLayer):
    """One attention layer's K and V, stored packed; optionally a sliding window."""

    is_croppable = False

    def __init__(self, k_spec: KVSpec, v_spec: KVSpec, seed: int = 0, sliding_window: int | None = None):
        super().__init__()
        self.k_spec, self.v_spec, self.seed = k_spec, v_spec, seed
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.cumulative_length = 0
        self.k_store = self.v_store = None
        self.support: kernels.KernelSupport | None = None

    def __repr__(self):
        window = f", window={self.sliding_window}" if self.is_sliding else ""
        return f"QuantizedKVLayer(k={self.k_spec.name}, v={self.v_spec.name}{window})"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        kd, vd = key_states.shape[-1], value_states.shape[-1]
        self.k_store = make_store(self.k_spec, kd, keys=True, seed=self.seed, device=self.device)
        self.v_store = make_store(self.v_spec, vd, keys=False, seed=self.seed + 1, device=self.device)
        self.support = kernels.supports(self.k_spec, self.v_spec, kd, self.device) if kd == vd else \
            kernels.KernelSupport("reference", "reference", None, f"K and V head dims differ ({kd}, {vd})")
        # transformers reads dtype/device from these in places; the data lives in the stores.
        self.keys = torch.tensor([], dtype=key_states.dtype, device=self.device)
        self.values = torch.tensor([], dtype=value_states.dtype, device=self.device)
        self.is_initialized = True

    def store(self, key_states: torch.Tensor, value_states: torch.Tensor) -> int:
        """Append the new tokens' K and V; returns the tokens held before."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        backend = backend_for(self.device)
        before = len(self.k_store)
        backend.store(self.k_store, key_states)
        backend.store(self.v_store, value_states)
        self.cumulative_length += key_states.shape[-2]
        return before

    def load(self, before: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense K and V for the model's attention (the window's tokens for a sliding layer)."""
        backend = backend_for(self.device)
        k, v = backend.load(self.k_store, dtype), backend.load(self.v_store, dtype)
        if self.is_sliding:
            visible = min(before, self.sliding_window - 1) + new
            k, v = k[..., -visible:, :], v[..., -visible:, :]
            self.k_store.keep_last(self.sliding_window - 1)
            self.v_store.keep_last(self.sliding_window - 1)
        return k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        before = self.store(key_states, value_states)
        return self.load(before, key_states.shape[-2], key_states.dtype)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.sliding_window if self.is_sliding else -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if not self.is_sliding:
            return self.cumulative_length + query_length, 0
        w = self.sliding_window
        offset = max(self.cumulative_length - w + 1, 0)
        if self.cumulative_length >= w:
            return w - 1 + query_length, offset
        return self.cumulative_length + query_length, offset

    def reset(self) -> None:
        self.k_store = self.v_store = None
        self.cumulative_length = 0
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise LowbitError("a quantized KV cache cannot be cropped (its bytes no longer hold the original values)")

    def _each_store(self, fn) -> None:
        for s in (self.k_store, self.v_store):
            if s is not None:
                s.index_batch(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._each_store(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._each_store(lambda t: t[indices, ...])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._each_store(lambda t: t.repeat_interleave(repeats, dim=0))

    def nbytes(self) -> tuple[int, int]:
        return (self.k_store.nbytes() if self.k_store else 0, self.v_store.nbytes() if self.v_store else 0)


def layer_plan(n_layers: int, kv_k: str, kv_v: str | None = None, boundary: int = 0,
               per_layer: dict[int, tuple[str, str]] | None = None,
               kv_layers: list[int] | None = None) -> list[tuple[KVSpec, KVSpec]]:
    """(K spec, V spec) for every layer: the default, f16 in the first/last `boundary` layers that hold K/V
    (`kv_layers`, all by default: a hybrid's linear-attention layers have none), then overrides."""
    kv_layers = list(range(n_layers)) if kv_layers is None else list(kv_layers)
    if boundary < 0 or 2 * boundary > len(kv_layers):
        raise LowbitError(f"boundary must be between 0 and {len(kv_layers) // 2} for {len(kv_layers)} layers with "
                          f"a KV cache, got {boundary}")
    k, v = parse_kv_spec(kv_k), parse_kv_spec(kv_v if kv_v is not None else kv_k)
    f16 = parse_kv_spec("f16")
    edges = set(kv_layers[:boundary]) | set(kv_layers[len(kv_layers) - boundary:])
    plan = [(f16, f16) if i in edges else (k, v) for i in range(n_layers)]
    for i, (lk, lv) in (per_layer or {}).items():
        if not -n_layers <= i < n_layers:
            raise LowbitError(f"per_layer: no layer {i} (the model has {n_layers})")
        plan[i] = (parse_kv_spec(lk), parse_kv_spec(lv))
    return plan


def _linear_layer(kind: str, kwargs: dict):
    """transformers' own cache layer for a linear-attention layer type (no K/V to quantize)."""
    cls = DYNAMIC_LAYER_TYPE_MAPPING[kind]
    assert issubclass(cls, LinearAttentionCacheLayerMixin), cls
    # transformers before 5.2x hands every layer the same kwargs (a sliding window too): take only its own.
    return cls(number_of_states=kwargs.get("number_of_states", 1))


class QuantizedKVCache(Cache):
    """Drop-in for DynamicCache: same layer types (full, sliding or linear attention), K and V stored packed per
    format; linear-attention layers keep transformers' own conv/recurrent states."""

    def __init__(self, config, kv_k: str = "turbo3", kv_v: str | None = None, *, boundary: int = 0,
                 per_layer: dict[int, tuple[str, str]] | None = None, seed: int = 0, fused_attention: bool = False):
        config = config.get_text_config(decoder=True)
        layer_types, kwargs = _layer_types(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_layers = [i for i, kind in enumerate(layer_types) if kind not in LINEAR_TYPES]
        self.plan = layer_plan(len(layer_types), kv_k, kv_v, boundary, per_layer, kv_layers)
        for k, v in set(self.plan):
            k.check_head_dim(head_dim)
            v.check_head_dim(head_dim)
        layers = []
        for i, (kind, kw) in enumerate(zip(layer_types, kwargs)):
            k, v = self.plan[i]
            if kind == "full_attention":
                layers.append(QuantizedKVLayer(k, v, seed=seed + 2 * i))
            elif kind in ("sliding_attention", "chunked_attention"):
                layers.append(QuantizedKVLayer(k, v, seed=seed + 2 * i, sliding_window=kw["sliding_window"]))
            elif kind in LINEAR_TYPES:
                layers.append(_linear_layer(kind, kw))
            else:
                raise LowbitError(f"layer type {kind!r} has no KV cache lowbit can quantize")
        super().__init__(layers=layers)
        self.text_config = config  # its attention implementation decides whether decode steps can be fused
        self.fused_attention = fused_attention
        self.fused_steps = 0
        self.dense_fallbacks = 0
        self.fallback_reasons: Counter[str] = Counter()
        self._pending: dict[int, QuantizedKVLayer] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        new = key_states.shape[-2]
        before = layer.store(key_states, value_states)
        if self.fused_attention and 0 < new <= FUSED_MAX_NEW:
            why = self._dense_reason(layer)
            if why is None:
                if layer_idx in self._pending:
                    raise LowbitError(f"layer {layer_idx}: the model's attention did not read the previous fused "
                                      f"decode step (does its attention function come from lowbit.cache.attention?)")
                self._pending[layer_idx] = layer
                _ACTIVE.cache = self
                return (key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[-1]),
                        value_states.new_empty(*value_states.shape[:2], 0, value_states.shape[-1]))
            self.count_dense(why)
        return layer.load(before, new, key_states.dtype)

    def _dense_reason(self, layer: QuantizedKVLayer) -> str | None:
        impl = self.text_config._attn_implementation
        if impl != ATTENTION:
            return f"the model's attention is {impl!r}, not {ATTENTION!r} (lowbit.cache.attention.enable sets it)"
        if layer.is_sliding:
            return "sliding-window layer"
        if layer.support.decode is None:
            return layer.support.reason
        return None

    def take_fused_step(self, layer_idx: int) -> QuantizedKVLayer | None:
        """The layer whose update() just left a fused decode step, once (None: the step was dense)."""
        layer = self._pending.pop(layer_idx, None)
        if not self._pending and _ACTIVE.cache is self:
            _ACTIVE.cache = None  # the thread must not keep a cache (all its K/V) alive once the user drops it
        return layer

    def count_dense(self, reason: str) -> None:
        """Count a decode step that attended densely, and warn the first time for each reason."""
        self.dense_fallbacks += 1
        self.fallback_reasons[reason] += 1
        if self.fallback_reasons[reason] == 1:
            warnings.warn(f"lowbit: decode steps attend densely, not from the packed cache: {reason} "
                          "(counted in QuantizedKVCache.dense_fallbacks)", stacklevel=3)

    def nbytes(self) -> int:
        """Bytes held right now by all layers' K and V stores (packed bytes plus any fp16 residual)."""
        return sum(sum(layer.nbytes()) for layer in self.layers if isinstance(layer, QuantizedKVLayer))

    def state_nbytes(self) -> int:
        """Bytes of the linear-attention layers' conv and recurrent states (as transformers allocates them)."""
        return sum(state_nbytes(layer) for layer in self.layers)


def state_nbytes(layer) -> int:
    """Bytes of one cache layer's conv and recurrent state tensors (0 for an attention layer)."""
    if not isinstance(layer, LinearAttentionCacheLayerMixin):
        return 0
    states = [*layer.conv_states.values(), *layer.recurrent_states.values()]
    return sum(t.numel() * t.element_size() for t in states if t is not None)
