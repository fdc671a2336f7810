"""A transformers Cache whose layers keep K and V as packed bytes in any lowbit KV format.

    from lowbit.kvcache import QuantizedKVCache
    cache = QuantizedKVCache(model.config, kv_k="q8_0", kv_v="turbo3", boundary=2)
    model(input_ids, past_key_values=cache, use_cache=True)   # `cache=` in transformers >= 5

Each layer holds one store for K and one for V (formats may differ, per layer too: `boundary=n`
keeps the first and last n layers in f16, as vLLM's boundary protection; `per_layer={i: (k, v)}`
overrides any layer). A store appends new tokens as real uint8 bytes in the format's layout
(`nbytes()` is exactly `KVFormat.vector_bytes(head_dim)` per vector; KIVI keys also hold up to 31
tokens in fp16 until their group of 32 is complete, as KIVI's residual does).

Attention: `update()` returns K and V for the model's own attention. The bytes go in and come out
through a backend chosen by device type. The built-in torch backend (CPU, or any device) packs on
store and dequantizes the whole layer on load; every attention therefore reads values decoded from
the stored bytes, the new tokens' own K/V included (decode-time semantics, also during prefill).
A CUDA backend with fused kernels registers itself with `register_backend("cuda", backend)`,
providing `store(store, x)` and `load(store, dtype)` over the same store objects and bytes.

Fused decode attention (`fused_attention=True`, with the model's attention set to "lowbit_turbo", see
`lowbit.kernels.attention`): when a full-attention layer gets at most FUSED_MAX_NEW new tokens, update()
skips the dense load and returns empty K/V tensors tagged with the layer (`key.lowbit_layer`); that
attention function reads the packed stores itself (the Triton kernel on CUDA, the reference elsewhere).

Sliding-window layers (Gemma 3) keep the last `sliding_window - 1` tokens like transformers'
DynamicSlidingWindowLayer (KIVI keys drop whole groups only, so a few more may stay).
The cache is not croppable (as transformers' own quantized caches): rolling back stored bytes
would need the pre-quantization values.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs

from lowbit.errors import LowbitError
from lowbit.quant.kv_baselines import KiviKeys, KVSpec, check_head_dim, make_codec, parse_kv_spec

_TORCH_NATIVE = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
FUSED_MAX_NEW = 16  # new tokens per step that take the fused decode path (more is prefill: dense K/V)


class _NativeCodec:
    """f32/f16/bf16 in torch: the same bits as gguf's converters (round to nearest even), any device."""

    def __init__(self, spec: KVSpec, head_dim: int):
        self.fmt, self.head_dim, self.dtype = spec.fmt, head_dim, _TORCH_NATIVE[spec.fmt.name]
        self.vector_bytes = spec.fmt.vector_bytes(head_dim)

    def quantize(self, x):
        return x.to(self.dtype).contiguous().view(torch.uint8)

    def dequantize(self, p):
        return p.contiguous().view(self.dtype).float()


def _needs_calibration(codec) -> bool:
    if hasattr(codec, "needs_calibration"):
        return codec.needs_calibration
    return hasattr(codec, "scale") and codec.scale is None


class VectorStore:
    """Per-token packed head vectors: `packed` is uint8 [batch, heads, tokens, vector_bytes], a view of a buffer
    that grows by doubling along tokens, so a decode step copies only its new vectors (not the whole cache,
    as a concatenation would). Vectors stay back to back (token stride = vector_bytes), as the CUDA decode
    kernel wants them."""

    def __init__(self, codec):
        self.codec = codec
        self.packed: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        self._lo = self._hi = 0  # packed = _buf[..., _lo:_hi, :]

    def __len__(self) -> int:
        return self._hi - self._lo

    def append(self, x: torch.Tensor) -> None:
        if x.shape[-2] and _needs_calibration(self.codec):
            # Outlier channels and channel means (per KV head) and fp8's scale come from the first tokens (the prefill).
            self.codec.calibrate(x, keep_dims=(1,))
        self.extend(self.codec.quantize(x) if x.shape[-2] else
                    torch.empty(*x.shape[:-1], self.codec.vector_bytes, dtype=torch.uint8, device=x.device))

    def extend(self, p: torch.Tensor) -> None:
        """Append already packed vectors [batch, heads, n, vector_bytes]."""
        n = p.shape[-2]
        if self._buf is None or self._hi + n > self._buf.shape[-2]:
            live = len(self)
            buf = torch.empty(*p.shape[:-2], max(16, 2 * live, live + n), p.shape[-1], dtype=torch.uint8,
                              device=p.device)
            if live:
                buf[..., :live, :] = self.packed
            self._buf, self._lo, self._hi = buf, 0, live
        self._buf[..., self._hi:self._hi + n, :] = p
        self._hi += n
        self.packed = self._buf[..., self._lo:self._hi, :]

    def dense(self) -> torch.Tensor:
        if len(self) == 0:
            return torch.zeros(*self.packed.shape[:-1], self.codec.head_dim, device=self.packed.device)
        return self.codec.dequantize(self.packed)

    def keep_last(self, n: int) -> None:
        if len(self) > n:
            self._lo = self._hi - n
            self.packed = self._buf[..., self._lo:self._hi, :]

    def index_batch(self, fn) -> None:
        if self.packed is not None:
            self._buf = fn(self.packed).contiguous()
            self._lo, self._hi = 0, self._buf.shape[-2]
            self.packed = self._buf

    def nbytes(self) -> int:
        return 0 if self.packed is None else self.packed.numel()


class KiviKeyStore:
    """KIVI keys: complete groups of 32 tokens quantized per channel, the rest kept in fp16."""

    def __init__(self, kivi: KiviKeys):
        self.kivi = kivi
        self.groups: torch.Tensor | None = None  # uint8 [B, H, G, group_bytes]
        self.residual: torch.Tensor | None = None  # fp16 [B, H, r < 32, D]

    def __len__(self) -> int:
        g = 0 if self.groups is None else self.groups.shape[-2] * 32
        return g + (0 if self.residual is None else self.residual.shape[-2])

    def append(self, x: torch.Tensor) -> None:
        r = x.to(torch.float16) if self.residual is None else torch.cat([self.residual, x.to(torch.float16)], -2)
        full = r.shape[-2] // 32 * 32
        if full:
            g = r[..., :full, :].float()
            g = g.reshape(*g.shape[:-2], full // 32, 32, g.shape[-1])
            # fp16 staging is what the residual holds; quantizing from it matches a real cache.
            p = self.kivi.quantize_group(g)
            self.groups = p if self.groups is None else torch.cat([self.groups, p], -2)
        self.residual = r[..., full:, :]

    def dense(self) -> torch.Tensor:
        parts = []
        if self.groups is not None:
            x = self.kivi.dequantize_group(self.groups)  # [B, H, G, 32, D]
            parts.append(x.reshape(*x.shape[:-3], -1, x.shape[-1]))
        if self.residual is not None:
            parts.append(self.residual.float())
        return torch.cat(parts, -2)

    def keep_last(self, n: int) -> None:
        while self.groups is not None and self.groups.shape[-2] and len(self) - 32 >= n:
            self.groups = self.groups[..., 1:, :]

    def index_batch(self, fn) -> None:
        self.groups = None if self.groups is None else fn(self.groups)
        self.residual = None if self.residual is None else fn(self.residual)

    def nbytes(self) -> int:
        return sum(0 if t is None else t.numel() * t.element_size() for t in (self.groups, self.residual))


def make_store(spec: KVSpec | str, head_dim: int, *, keys: bool, seed: int = 0, device="cpu"):
    spec = parse_kv_spec(spec) if isinstance(spec, str) else spec
    check_head_dim(spec, head_dim)
    if spec.fmt.kivi_bits and keys:
        return KiviKeyStore(KiviKeys(spec.fmt, head_dim))
    if spec.fmt.name in _TORCH_NATIVE and not spec.rot:
        return VectorStore(_NativeCodec(spec, head_dim))
    return VectorStore(make_codec(spec, head_dim, seed=seed, device=device))


# --- backends: the seam for device-specific kernels ---------------------------------------------
class TorchBackend:
    """Reference path: pack on store, dequantize the whole layer on load (the model's attention runs)."""

    def store(self, store, x: torch.Tensor) -> None:
        store.append(x)

    def load(self, store, dtype: torch.dtype) -> torch.Tensor:
        return store.dense().to(dtype)


_BACKENDS: dict[str, object] = {}
_DEFAULT = TorchBackend()


def register_backend(device_type: str, backend) -> None:
    """Use `backend` (with store(store, x) and load(store, dtype)) for caches on this device type."""
    _BACKENDS[device_type] = backend


def backend_for(device: torch.device):
    return _BACKENDS.get(torch.device(device).type, _DEFAULT)


# --- the cache ----------------------------------------------------------------------------------
class QuantizedKVLayer(DynamicLayer):
    """One attention layer's K and V, stored packed; optionally a sliding window."""

    is_croppable = False

    def __init__(self, k_spec: KVSpec, v_spec: KVSpec, seed: int = 0, sliding_window: int | None = None,
                 fused_attention: bool = False):
        super().__init__()
        self.k_spec, self.v_spec, self.seed = k_spec, v_spec, seed
        self.fused_attention = fused_attention
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.cumulative_length = 0
        self.k_store = self.v_store = None

    def __repr__(self):
        window = f", window={self.sliding_window}" if self.is_sliding else ""
        return f"QuantizedKVLayer(k={self.k_spec.name}, v={self.v_spec.name}{window})"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.k_store = make_store(self.k_spec, key_states.shape[-1], keys=True, seed=self.seed, device=self.device)
        self.v_store = make_store(self.v_spec, value_states.shape[-1], keys=False, seed=self.seed + 1,
                                  device=self.device)
        # transformers reads dtype/device from these in places; the data lives in the stores.
        self.keys = torch.tensor([], dtype=key_states.dtype, device=self.device)
        self.values = torch.tensor([], dtype=value_states.dtype, device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        backend = backend_for(self.device)
        before = len(self.k_store)
        backend.store(self.k_store, key_states)
        backend.store(self.v_store, value_states)
        self.cumulative_length += key_states.shape[-2]
        if self._fused_step(key_states):
            k = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[-1])
            k.lowbit_layer = self  # the packed stores, for the "lowbit_turbo" attention function
            return k, value_states.new_empty(k.shape)
        k = backend.load(self.k_store, key_states.dtype)
        v = backend.load(self.v_store, value_states.dtype)
        if self.is_sliding:
            visible = min(before, self.sliding_window - 1) + key_states.shape[-2]
            k, v = k[..., -visible:, :], v[..., -visible:, :]
            self.k_store.keep_last(self.sliding_window - 1)
            self.v_store.keep_last(self.sliding_window - 1)
        return k, v

    def _fused_step(self, key_states: torch.Tensor) -> bool:
        return (self.fused_attention and not self.is_sliding and 0 < key_states.shape[-2] <= FUSED_MAX_NEW
                and all(isinstance(s, VectorStore) for s in (self.k_store, self.v_store)))

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
               per_layer: dict[int, tuple[str, str]] | None = None) -> list[tuple[KVSpec, KVSpec]]:
    """(K spec, V spec) for every layer: the default, f16 in the first/last `boundary` layers, then overrides."""
    if boundary < 0 or 2 * boundary > n_layers:
        raise LowbitError(f"boundary must be between 0 and {n_layers // 2} for {n_layers} layers, got {boundary}")
    k, v = parse_kv_spec(kv_k), parse_kv_spec(kv_v if kv_v is not None else kv_k)
    f16 = parse_kv_spec("f16")
    plan = [(f16, f16) if i < boundary or i >= n_layers - boundary else (k, v) for i in range(n_layers)]
    for i, (lk, lv) in (per_layer or {}).items():
        if not -n_layers <= i < n_layers:
            raise LowbitError(f"per_layer: no layer {i} (the model has {n_layers})")
        plan[i] = (parse_kv_spec(lk), parse_kv_spec(lv))
    return plan


class QuantizedKVCache(Cache):
    """Drop-in for DynamicCache: same layer types (full or sliding), K and V stored packed per format."""

    def __init__(self, config, kv_k: str = "turbo3", kv_v: str | None = None, *, boundary: int = 0,
                 per_layer: dict[int, tuple[str, str]] | None = None, seed: int = 0, fused_attention: bool = False):
        config = config.get_text_config(decoder=True)
        layer_types, kwargs = get_layer_types_and_kwargs(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.plan = layer_plan(len(layer_types), kv_k, kv_v, boundary, per_layer)
        for k, v in set(self.plan):
            check_head_dim(k, head_dim)
            check_head_dim(v, head_dim)
        layers = []
        for i, (kind, kw) in enumerate(zip(layer_types, kwargs)):
            k, v = self.plan[i]
            if kind == "full_attention":
                layers.append(QuantizedKVLayer(k, v, seed=seed + 2 * i, fused_attention=fused_attention))
            elif kind in ("sliding_attention", "chunked_attention"):
                layers.append(QuantizedKVLayer(k, v, seed=seed + 2 * i, sliding_window=kw["sliding_window"]))
            else:
                raise LowbitError(f"layer type {kind!r} has no KV cache lowbit can quantize")
        super().__init__(layers=layers)

    def nbytes(self) -> int:
        """Bytes held right now by all layers' K and V stores (packed bytes plus any fp16 residual)."""
        return sum(sum(layer.nbytes()) for layer in self.layers)
