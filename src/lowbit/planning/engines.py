"""The inference engines: what each allocates beside the weights, and where it places a model.

The same model, formats and context cost different bytes under different engines. Each engine class
owns its rules; `plan()` asks the chosen one for the KV cache, recurrent state and runtime buffers
(`allocate`), and `fit` asks it to place a model on a device budget (`place`):

- llama.cpp (`LlamaCpp`): the KV cache is padded to 256 cells; a sliding-window layer holds
  `window + n_ubatch` cells per sequence (never more than the full context); Gated DeltaNet / Mamba
  state is f32, one copy per sequence; the output and compute buffers follow the context, -b/-ub and
  sequence count as llama.cpp reserves them (`runtime_parts`); the input embedding table stays in host memory; over several
  GPUs whole layers are split evenly, and a model that does not fit on one GPU keeps MoE expert
  tensors, then whole layers, in CPU RAM (`LayerSplit`).
- transformers (`Transformers`): Hugging Face transformers' DynamicCache, or lowbit's QuantizedKVCache (the same
  rules, K/V in lowbit's format bytes): exactly the tokens held, no padding; a sliding-window layer keeps the
  last `window - 1` tokens; a Gated DeltaNet layer keeps `kernel` conv columns in the model dtype and the
  recurrent state in float32 (what the kernels return). Checked to the byte against the cache on an H200
  (docs/real-size.md). The whole model on one device (`OneDevice`): device_map splits are not modelled.
- vLLM (`VLLM`): paged KV in blocks of 16 tokens from one shared pool; hybrid models group layers into
  equally sized groups sharing one page size, and for GDN/Mamba hybrids the attention block is
  raised until an attention page holds a whole recurrent state (the state page padded to match);
  the instance is capped at `gpu_memory_utilization` of the GPU and the activation peak of a
  `max_num_batched_tokens` dummy forward comes off the top; tensor parallel over several GPUs
  (`TensorParallel`).

Bytes that follow from a format definition and the engine's rules are exact for that rule; activation
peaks (llama.cpp's widest block, vLLM's profiling forward) and non-torch memory are estimates, and
`assumptions()` names each one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from math import ceil
from typing import ClassVar, Protocol

from lowbit.devices import Budget
from lowbit.errors import LowbitError
from lowbit.formats.kv import KVFormat
from lowbit.formats.weights import aligned
from lowbit.models.config import FULL, LINEAR, SLIDING, ModelConfig
from lowbit.models.tensors import EXPERTS, VISION
from lowbit.planning.search import largest, smallest

ENGINES = ("llama.cpp", "vllm", "transformers")
GIB = 1 << 30


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pad(n: int, to: int) -> int:
    return _cdiv(n, to) * to


def activations_per_token(cfg: ModelConfig) -> int:
    """Values one token's widest layer keeps live (the runtime estimates' unit): 4 x hidden plus twice the
    widest projection (the FFN, MoE top-k + shared, gated query, or Gated DeltaNet conv)."""
    ffn = cfg.intermediate_size
    if cfg.is_moe:
        ffn = max(ffn, cfg.num_experts_used * cfg.moe_intermediate_size + cfg.shared_expert_intermediate_size)
    return 4 * cfg.hidden_size + 2 * max(ffn, cfg.num_heads * cfg.head_dim * 2, cfg.gdn_conv_dim)


@dataclass(frozen=True)
class Allocation:
    """What one engine allocates for a model at a context and sequence count (one device's share)."""

    kv_k_bytes: int
    kv_v_bytes: int
    state_bytes: int
    runtime_bytes: int
    cells: dict  # tokens of KV each layer type holds, all sequences together

    @property
    def kv_bytes(self) -> int:
        return self.kv_k_bytes + self.kv_v_bytes


@dataclass(frozen=True)
class GpuShare:
    """What one GPU of several holds."""

    weights_bytes: int
    kv_bytes: int
    state_bytes: int
    runtime_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.state_bytes + self.runtime_bytes


@dataclass(frozen=True)
class Need:
    """Bytes on the most loaded device, and in host RAM, for one context and user count."""

    device_bytes: int
    host_bytes: int
    weights_bytes: int  # on that device
    kv_bytes: int
    state_bytes: int
    runtime_bytes: int
    per_gpu: tuple[GpuShare, ...] = ()  # each GPU's share when there are several


class PlacedTensor(Protocol):
    """What placement reads of a tensor: a planned one (planner.TensorPlan) or a checkpoint's own."""

    name: str
    shape: tuple[int, ...]
    kind: str
    bytes: int


class Placement(Protocol):
    """A model placed by one engine on one device budget: the forward function every fit solver searches."""

    engine: Engine
    limit: int  # bytes one device may use
    split_assumption: str  # how the model is divided over several GPUs

    def need(self, context: int, users: int = 1) -> Need: ...

    def offload(self, context: int, users: int = 1) -> dict | None:
        """Which parts go to CPU RAM when the model does not fit; None where the engine has no such plan."""


class Engine:
    """An inference engine's allocation and placement rules."""

    name: str
    default_weights: ClassVar[str | None] = None  # None: a GGUF's own types, else Q4_K_M (the planner's default)

    def check_weights(self, mix_name: str, gguf: bool) -> None:
        """Refuse a weight format this engine does not run (`mix_name` "stored": the file's own types)."""

    def allocate(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int, sequences: int,
                 mtp: bool = False) -> Allocation:
        raise NotImplementedError

    def assumptions(self) -> dict[str, str]:
        """Where the kv, state and runtime figures come from (exact for the engine's rule, or estimated)."""
        raise NotImplementedError

    def host_tensors(self, tensor_names: Sequence[str]) -> set[str]:
        """Tensors kept in host memory even when the whole model is on the GPU."""
        return set()

    def place(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, tensors: Sequence[PlacedTensor], budget: Budget,
              mtp: bool = False, pad: Callable[[int], int] = aligned) -> Placement:
        """The model (its `tensors`, each `pad`ded as stored) on `budget`, as this engine places it."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaCpp(Engine):
    name: str = "llama.cpp"
    n_ubatch: int = 512  # micro-batch (-ub, --ubatch-size default)
    n_batch: int = 2048  # logical batch (-b, --batch-size default)
    n_gpu_layers: int | None = None  # -ngl: the last N layers on the GPU (N > layers: the output too); None: all
    kv_pad: int = 256  # KV cells are padded to 256 with flash attention (src/llama-kv-cache.cpp)
    # Architectures llama.cpp runs with a sliding-window cache; for any other (Mistral's GGUF is `llama`) it
    # allocates the full context even where the model was trained with a window.
    SWA_ARCHES: ClassVar[frozenset[str]] = frozenset({"gemma3"})
    # ggml's graph allocator places tensors best-fit in one arena; the arena outgrows the live tensors of the
    # widest block by this much (llama.cpp 0c1e57098 on CPU: 1.333 on SmolLM2, 1.340 on Gemma 3).
    FRAGMENTATION: ClassVar[float] = 4 / 3

    def __post_init__(self):
        for name in ("n_ubatch", "n_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
                raise LowbitError(f"llama.cpp {name} must be an integer from 1 to {1 << 20:,}, got {value!r}")

    def ubatch(self, context: int, sequences: int = 1) -> int:
        """The micro-batch llama.cpp runs: -ub, at most -b, and at most the whole context (n_ctx is all the
        sequences' cells together)."""
        return min(context * sequences, self.n_batch, self.n_ubatch)

    def layer_cells(self, cfg: ModelConfig, context: int, mtp: bool = False, sequences: int = 1) -> list[int]:
        """KV cells each layer holds per sequence (0 for recurrent layers), MTP layers appended.

        Full attention: the context padded to 256. Sliding window: window + one micro-batch, padded, at most
        the full size (llama_kv_cache_iswa, one stream per sequence; llama-cli and llama-server run with
        --swa-full off).
        """
        full = _pad(context, self.kv_pad)
        swa = full
        if cfg.sliding_window and cfg.arch in self.SWA_ARCHES:
            swa = min(full, _pad(cfg.sliding_window + self.ubatch(context, sequences), self.kv_pad))
        cells = [0 if t == LINEAR else swa if t == SLIDING else full for t in cfg.layer_types]
        return cells + [full] * (cfg.mtp_layers if mtp else 0)

    @staticmethod
    def layer_kv_heads(cfg: ModelConfig, mtp: bool = False) -> list[int]:
        return list(cfg.num_kv_heads) + [max(cfg.num_kv_heads)] * (cfg.mtp_layers if mtp else 0)

    def kv_cache_bytes(self, cfg: ModelConfig, kv: KVFormat, context: int, sequences: int,
                       mtp: bool = False) -> tuple[int, dict]:
        """Bytes of one of K or V for the whole cache, and the cells each layer type holds."""
        cells = self.layer_cells(cfg, context, mtp, sequences)
        per_vector = kv.vector_bytes(cfg.head_dim)
        total = sum(c * h for c, h in zip(cells, self.layer_kv_heads(cfg, mtp))) * sequences * per_vector
        by_type = {FULL: _pad(context, self.kv_pad) * sequences}
        for t, c in zip(cfg.layer_types, cells):
            if t == SLIDING:
                by_type[SLIDING] = c * sequences
        return total, by_type

    @staticmethod
    def recurrent_state_bytes(cfg: ModelConfig, sequences: int) -> int:
        """Recurrent layers (Gated DeltaNet, Mamba-2): conv window (kernel-1 x conv_dim) + state (heads x dk x dv),
        f32, per sequence (llama.cpp n_embd_r and n_embd_s)."""
        per_layer = (cfg.linear_conv_kernel_dim - 1) * cfg.gdn_conv_dim + (
            cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim
        )
        return cfg.count(LINEAR) * per_layer * 4 * sequences

    @staticmethod
    def block_activations(cfg: ModelConfig) -> int:
        """f32 values per token live at the peak of the widest block (estimated from the graph's shape):
        attention (residual, norm, Q, K, V, attention output), the FFN (residual, gate, up, their product),
        or a Gated DeltaNet / Mamba block (residual, conv input and output, gate, output)."""
        e = cfg.hidden_size
        q = cfg.num_heads * cfg.head_dim * (2 if cfg.attn_output_gate else 1)
        kv = max(cfg.num_kv_heads, default=0) * cfg.head_dim
        attention = 2 * e + 2 * q + 2 * kv if cfg.count(FULL) + cfg.count(SLIDING) else 0
        ffn = e + 3 * cfg.intermediate_size
        if cfg.is_moe:
            ffn = max(ffn, e + 3 * (cfg.num_experts_used * cfg.moe_intermediate_size
                                    + cfg.shared_expert_intermediate_size) + 2 * cfg.num_experts)
        recurrent = e + 3 * cfg.gdn_conv_dim + 2 * cfg.gdn_value_dim if cfg.count(LINEAR) else 0
        return max(attention, ffn, recurrent)

    def runtime_parts(self, cfg: ModelConfig, context: int, sequences: int = 1) -> dict[str, int]:
        """llama.cpp's CPU output and compute buffers, as it reserves them at context creation.

        Output buffer (llama_context::output_reserve): f32 logits for one token per sequence. Exact.
        Compute buffer (sched_reserve): the larger of the graphs for one micro-batch of T tokens and for one
        token per sequence; for each, the larger of two moments of the graph:
          the output head: f32 logits for every token plus two hidden-state rows (T x 4 x (vocab + 2 hidden)),
          matching llama.cpp's allocator to the byte on both real models;
          a block: the inputs (token ids, positions, K/V row indices: 24 bytes a token), the f16 KQ masks
          (T x cells of the full-attention cache, and of the sliding-window cache), exact, plus the live
          activations of the widest block times the allocator's fragmentation, estimated.
        """
        ub = max(self.ubatch(context, sequences), sequences)
        cells = self.layer_cells(cfg, context, sequences=sequences)
        full = max((c for c, t in zip(cells, cfg.layer_types) if t == FULL), default=0)
        swa = max((c for c, t in zip(cells, cfg.layer_types) if t == SLIDING), default=0)
        head = ub * 4 * (cfg.vocab_size + 2 * cfg.hidden_size)
        masks = 2 * ub * (full + swa)
        block = 24 * ub + masks + ceil(ub * 4 * self.block_activations(cfg) * self.FRAGMENTATION)
        return {"output": cfg.vocab_size * sequences * 4, "compute": max(head, block), "head": head,
                "block": block, "masks": masks, "ubatch": ub}

    def runtime_bytes(self, cfg: ModelConfig, sequences: int, context: int | None = None) -> int:
        """Output plus compute buffer (see runtime_parts); `context` None: the largest micro-batch, -ub tokens."""
        if context is None:
            context = self.n_batch
        parts = self.runtime_parts(cfg, context, sequences)
        return parts["output"] + parts["compute"]

    def allocate(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int, sequences: int,
                 mtp: bool = False) -> Allocation:
        kb, cells = self.kv_cache_bytes(cfg, k, context, sequences, mtp)
        vb, _ = self.kv_cache_bytes(cfg, v, context, sequences, mtp)
        return Allocation(kb, vb, self.recurrent_state_bytes(cfg, sequences),
                          self.runtime_bytes(cfg, sequences, context), cells)

    def layer_cache_bytes(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int, sequences: int,
                          mtp: bool = False) -> list[int]:
        """KV + recurrent state of each block `blk.i` (MTP blocks appended), the same rule as `allocate`.

        llama.cpp keeps a layer's cache on the device that holds the layer (`offload_kqv`), so this is
        what moves with a layer when layers are split or offloaded.
        """
        per_vec = k.vector_bytes(cfg.head_dim) + v.vector_bytes(cfg.head_dim)
        n_linear = cfg.count(LINEAR)
        state_per_layer = self.recurrent_state_bytes(cfg, sequences) // n_linear if n_linear else 0
        types = list(cfg.layer_types) + [FULL] * (cfg.mtp_layers if mtp else 0)
        cells, heads = self.layer_cells(cfg, context, mtp, sequences), self.layer_kv_heads(cfg, mtp)
        return [state_per_layer if t == LINEAR else c * sequences * h * per_vec for t, c, h in zip(types, cells, heads)]

    def host_tensors(self, tensor_names: Sequence[str]) -> set[str]:
        """Tensors llama.cpp keeps in host memory even with every layer on the GPU.

        "there is very little benefit to offloading the input layer, so always keep it on the CPU"
        (llama.cpp src/llama-model.cpp, dev_input = cpu). A tied model's output copy still goes to
        the GPU (TENSOR_DUPLICATED), so its embedding bytes count on both sides.
        """
        return {n for n in tensor_names if n == "token_embd.weight"}

    def assumptions(self) -> dict[str, str]:
        return {
            "kv": f"exact for llama.cpp: cells padded to {self.kv_pad} (flash attention); sliding-window layers hold "
                  f"window + {self.n_ubatch} cells per sequence; KV stays with its layer's device",
            "state": "exact for llama.cpp: conv window + recurrent state of Gated DeltaNet or Mamba layers, f32, one per sequence",
            "runtime": f"mostly exact: llama.cpp's CPU buffers for -b {self.n_batch} -ub {self.n_ubatch}, flash attention on: output "
                       "buffer (f32 logits, one token per sequence) exact; compute buffer = the larger of the output "
                       "head (f32 logits + 2 hidden rows per micro-batch token, exact) and a block (inputs and f16 "
                       "KQ masks exact, the widest block's activations x 4/3 for the allocator estimated); within 2% "
                       "of llama.cpp on SmolLM2 and Gemma 3 at every context measured",
            "placement": "llama.cpp keeps token_embd.weight in host memory (input layer always on the CPU)",
        }

    def place(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, tensors: Sequence[PlacedTensor], budget: Budget,
              mtp: bool = False, pad: Callable[[int], int] = aligned) -> LayerSplit:
        return LayerSplit(self, cfg, k, v, tensors, budget, mtp, pad)


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transformers(Engine):
    name: str = "transformers"
    dtype_bytes: int = 2  # the model's dtype (bf16): the conv window's
    default_weights: ClassVar[str] = "BF16"
    FLOAT_WEIGHTS: ClassVar[frozenset[str]] = frozenset({"BF16", "F16", "F32"})

    def check_weights(self, mix_name: str, gguf: bool) -> None:
        if mix_name in self.FLOAT_WEIGHTS or (mix_name == "stored" and not gguf):
            return
        raise LowbitError(f"the transformers engine runs float checkpoints (--weights BF16, F16, F32, or a "
                          f"checkpoint's own safetensors as `stored`), not {mix_name}: transformers dequantizes a "
                          f"GGUF when it loads one")

    def __post_init__(self):
        if self.dtype_bytes not in (2, 4):
            raise LowbitError(f"transformers dtype_bytes must be 2 (bf16/fp16) or 4 (float32), "
                              f"got {self.dtype_bytes!r}")

    @staticmethod
    def layer_tokens(cfg: ModelConfig, context: int) -> list[int]:
        """Tokens each layer holds per sequence: all of them, the last window - 1 in a sliding layer
        (DynamicSlidingWindowLayer, and lowbit's QuantizedKVLayer), none in a recurrent one."""
        window = min(context, cfg.sliding_window - 1) if cfg.sliding_window else context
        return [0 if t == LINEAR else window if t == SLIDING else context for t in cfg.layer_types]

    def state_parts(self, cfg: ModelConfig) -> tuple[int, int]:
        """(conv, recurrent) bytes per recurrent layer and sequence: `kernel` conv columns x conv_dim in the
        model dtype, and the heads x dk x dv state in float32."""
        conv = cfg.linear_conv_kernel_dim * cfg.gdn_conv_dim * self.dtype_bytes
        return conv, cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4

    def recurrent_state_bytes(self, cfg: ModelConfig, sequences: int) -> int:
        return cfg.count(LINEAR) * sum(self.state_parts(cfg)) * sequences

    def allocate(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int, sequences: int,
                 mtp: bool = False) -> Allocation:
        if mtp:
            raise LowbitError("the transformers engine plans the text model without its MTP layer")
        tokens = self.layer_tokens(cfg, context)
        held = sum(t * h for t, h in zip(tokens, cfg.num_kv_heads)) * sequences
        cells = {FULL: context * sequences, **{kind: t * sequences for kind, t in zip(cfg.layer_types, tokens)
                                               if kind == SLIDING}}
        return Allocation(held * k.vector_bytes(cfg.head_dim), held * v.vector_bytes(cfg.head_dim),
                          self.recurrent_state_bytes(cfg, sequences), cfg.vocab_size * sequences * 4, cells)

    def assumptions(self) -> dict[str, str]:
        return {
            "kv": "exact for transformers' DynamicCache and lowbit's QuantizedKVCache: the tokens held, no padding; "
                  "sliding-window layers keep window - 1; lowbit's packed stores grow by doubling, so after a "
                  "power of two they hold up to twice this until reserved (VectorStore.reserve)",
            "state": "exact for Gated DeltaNet under transformers with flash-linear-attention (H200, Qwen3.5-27B and "
                     "35B-A3B): kernel conv columns in the model dtype + float32 recurrent state; Mamba-2 counted "
                     "the same way, not measured",
            "runtime": "estimated: the float32 logits of one position per sequence (generate keeps the last); a "
                       "prefill's transient memory is not counted (1.1-9.0 GB above the cache with 4,096-token "
                       "chunks at 32K-128K on an H200, more with a packed cache: docs/real-size.md)",
            "weights": "transformers holds the checkpoint's dtype for every tensor (for BF16, the F32 routers and "
                       "norms counted here are half as large there: 44 MB for the 35B-A3B)",
        }

    def place(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, tensors: Sequence[PlacedTensor], budget: Budget,
              mtp: bool = False, pad: Callable[[int], int] = aligned) -> "OneDevice":
        if budget.gpus > 1:
            raise LowbitError("the transformers engine places a model on one device; its device_map and tp_plan "
                              "over several GPUs are not modelled (--engine llama.cpp or vllm plan those)")
        return OneDevice(self, cfg, k, v, tensors, budget, mtp, pad)


class OneDevice:
    """transformers' placement as `lowbit` models it: the whole model and its cache on one device, no offload."""

    split_assumption = "transformers: the whole model on one device (no device_map split or offload modelled)"

    def __init__(self, engine: Transformers, cfg: ModelConfig, k: KVFormat, v: KVFormat,
                 tensors: Sequence[PlacedTensor], budget: Budget, mtp: bool, pad: Callable[[int], int]):
        self.engine, self.cfg, self.k, self.v, self.mtp = engine, cfg, k, v, mtp
        self.limit = budget.usable_bytes
        self.weights = sum(pad(t.bytes) for t in tensors)

    def need(self, context: int, users: int = 1) -> Need:
        a = self.engine.allocate(self.cfg, self.k, self.v, context, users, self.mtp)
        return Need(self.weights + a.kv_bytes + a.state_bytes + a.runtime_bytes, 0, self.weights, a.kv_bytes,
                    a.state_bytes, a.runtime_bytes)

    def offload(self, context: int, users: int = 1) -> None:
        return None


_LAYER = re.compile(r"^(?:blk|model\.layers|layers)\.(\d+)\.")


def _layer_of(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def _ot_pattern(layers: int) -> str:
    """llama.cpp --override-tensor value that keeps the routed experts of the first `layers` layers on the CPU."""
    ids = "|".join(str(i) for i in range(layers))
    return rf"blk\.({ids})\.ffn_(up|down|gate)_exps\.weight=CPU"


class LayerSplit:
    """llama.cpp's placement. On a GPU it keeps the host tensors (token_embd) in host RAM; the rest, with
    each layer's KV and state, goes to the GPU; with N GPUs layers are split evenly (llama.cpp's default
    layer split). On unified memory (Apple, phones, CPU RAM) everything is one pool."""

    split_assumption = "llama.cpp layer split: layers divided evenly, each with its KV; output on the last GPU"

    def __init__(self, engine: LlamaCpp, cfg: ModelConfig, k: KVFormat, v: KVFormat,
                 tensors: Sequence[PlacedTensor], budget: Budget, mtp: bool, pad: Callable[[int], int]):
        self.engine, self.cfg, self.k, self.v, self.budget, self.mtp = engine, cfg, k, v, budget, mtp
        self.limit = budget.usable_bytes
        self.weights_total = sum(pad(t.bytes) for t in tensors)
        host = engine.host_tensors([t.name for t in tensors])
        self.host_only = sum(pad(t.bytes) for t in tensors if t.name in host)
        n_blocks = cfg.num_layers + (cfg.mtp_layers if mtp else 0)
        self.layer_dense = [0] * n_blocks  # per block: weights other than routed experts
        self.layer_experts = [0] * n_blocks
        self.outside = 0  # output head, final norm, ...: with the last layer's device
        for t in tensors:
            i = _layer_of(t.name)
            if t.name in host:
                if cfg.tie_word_embeddings:
                    self.outside += pad(t.bytes)  # the duplicated output copy on the device
            elif 0 <= i < n_blocks and t.kind != VISION:
                (self.layer_experts if t.kind == EXPERTS else self.layer_dense)[i] += pad(t.bytes)
            else:
                self.outside += pad(t.bytes)

    def need(self, context: int, users: int = 1) -> Need:
        a = self.engine.allocate(self.cfg, self.k, self.v, context, users, self.mtp)
        w_all = self.weights_total
        if self.budget.unified:  # one pool: -ngl moves compute, not bytes
            return Need(w_all + a.kv_bytes + a.state_bytes + a.runtime_bytes, 0, w_all, a.kv_bytes, a.state_bytes,
                        a.runtime_bytes)
        cache = self.engine.layer_cache_bytes(self.cfg, self.k, self.v, context, users, self.mtp)
        if self.engine.n_gpu_layers is not None:
            return self._need_ngl(self.engine.n_gpu_layers, a, cache)
        n = self.budget.gpus
        per_gpu = [a.runtime_bytes] * n  # estimated: each GPU holds its own compute buffer
        weights, kv, state = [0] * n, [0] * n, [0] * n
        types = list(self.cfg.layer_types) + [FULL] * (len(cache) - self.cfg.num_layers)  # MTP blocks: attention
        for i, c in enumerate(cache):
            d = min(n - 1, i * n // len(cache))
            per_gpu[d] += self.layer_dense[i] + self.layer_experts[i] + c
            weights[d] += self.layer_dense[i] + self.layer_experts[i]
            (state if types[i] == LINEAR else kv)[d] += c
        per_gpu[-1] += self.outside
        weights[-1] += self.outside
        worst = max(range(n), key=per_gpu.__getitem__)
        shares = tuple(GpuShare(weights[d], kv[d], state[d], a.runtime_bytes) for d in range(n)) if n > 1 else ()
        return Need(per_gpu[worst], self.host_only, weights[worst], a.kv_bytes, a.state_bytes, a.runtime_bytes,
                    shares)

    def _gpu_blocks(self, ngl: int) -> tuple[range, bool]:
        """llama.cpp -ngl N: the last min(N, layers) blocks on the GPU, and the output layer too when N > layers
        (src/llama-model.cpp: i_gpu_start = n_layer - ngl; the output is layer n_layer)."""
        n = len(self.layer_dense)
        if self.budget.gpus != 1:
            raise LowbitError("-ngl/--n-gpu-layers is modelled on one GPU; with several, llama.cpp splits the GPU "
                              "layers by --tensor-split, which lowbit does not model")
        return range(n - min(ngl, n), n), ngl > n

    def _need_ngl(self, ngl: int, a: Allocation, cache: list[int]) -> Need:
        blocks, output = self._gpu_blocks(ngl)
        weights = sum(self.layer_dense[i] + self.layer_experts[i] for i in blocks) + (self.outside if output else 0)
        device = a.runtime_bytes + weights + sum(cache[i] for i in blocks)
        host = self.weights_total - weights + sum(cache) - sum(cache[i] for i in blocks)  # token_embd included
        return Need(device, host, weights, a.kv_bytes, a.state_bytes, a.runtime_bytes)

    def offload(self, context: int, users: int = 1) -> dict | None:
        """On one discrete GPU: experts of the first layers to CPU first (--n-cpu-moe), then whole layers
        (-ngl), as llama.cpp --fit does; with -ngl given, that placement. None on unified memory or several GPUs."""
        if self.engine.n_gpu_layers is not None and not self.budget.unified:
            ngl = self.engine.n_gpu_layers
            blocks, output = self._gpu_blocks(ngl)
            need = self.need(context, users)
            n = len(self.layer_dense)
            return {"layers_on_cpu": n - len(blocks), "expert_layers_on_cpu": 0, "gpu_layers": len(blocks),
                    "bytes_on_gpu": need.device_bytes, "bytes_on_cpu": need.host_bytes, "llama_args": f"-ngl {ngl}",
                    "override_tensor": "", "note": f"as asked: -ngl {ngl} ({len(blocks)} of {n} layers on the GPU, "
                                                   f"output layer {'on the GPU' if output else 'in CPU RAM'})"}
        if self.budget.unified or self.budget.gpus != 1:
            return None
        n = len(self.layer_dense)
        cache = self.engine.layer_cache_bytes(self.cfg, self.k, self.v, context, users, self.mtp)
        runtime = self.engine.allocate(self.cfg, self.k, self.v, context, users).runtime_bytes
        everything = self.outside + sum(self.layer_dense) + sum(self.layer_experts) + sum(cache)

        def on_gpu(ngl: int, cpu_moe: int) -> int:
            b = runtime + (self.outside if ngl == n else 0)
            for i in range(n - ngl, n):
                b += self.layer_dense[i] + cache[i] + (self.layer_experts[i] if i >= cpu_moe else 0)
            return b

        def result(ngl: int, cpu_moe: int, note: str) -> dict:
            gpu = on_gpu(ngl, cpu_moe)
            args = [f"-ngl {ngl if ngl < n else 99}"] + ([f"--n-cpu-moe {cpu_moe}"] if cpu_moe else [])
            return {"layers_on_cpu": n - ngl, "expert_layers_on_cpu": cpu_moe, "gpu_layers": ngl,
                    "bytes_on_gpu": gpu, "bytes_on_cpu": self.host_only + everything - (gpu - runtime),
                    "llama_args": " ".join(args), "override_tensor": _ot_pattern(cpu_moe) if cpu_moe else "",
                    "note": note}

        if on_gpu(n, 0) <= self.limit:
            return result(n, 0, "everything but token_embd on the GPU")
        has_experts = any(self.layer_experts)
        if has_experts and on_gpu(n, n) <= self.limit:
            k = smallest(lambda m: on_gpu(n, m) <= self.limit, 0, n)
            return result(n, k, f"routed experts of the first {k} layers in CPU RAM, everything else on the GPU")
        cpu_moe = n if has_experts else 0
        ngl = largest(lambda g: on_gpu(g, cpu_moe) <= self.limit, 0, n)
        if ngl is None:
            return result(0, cpu_moe, "even the compute buffer does not fit on the GPU: CPU only")
        return result(ngl, cpu_moe, f"{n - ngl} of {n} layers in CPU RAM" +
                      (", all routed experts in CPU RAM" if cpu_moe else ""))


# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLM(Engine):
    name: str = "vllm"
    block_size: int = 16  # tokens per KV block (CacheConfig default on CUDA)
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 8192  # prefill chunk of the profiling dummy run
    max_num_seqs: int = 256
    model_dtype_bytes: int = 2  # bf16 activations and conv state
    ssm_state_bytes: int = 4  # Qwen3.5 configs set mamba_ssm_dtype=float32
    tp: int = 1

    # --- layer groups and pages (vllm/v1/core/kv_cache_utils.py, models/config.py) -------------
    def _attn_bytes_per_token(self, cfg: ModelConfig, k: KVFormat, v: KVFormat) -> int:
        heads = max((h for h in cfg.num_kv_heads if h), default=0)
        return heads * (k.vector_bytes(cfg.head_dim) + v.vector_bytes(cfg.head_dim))

    def mamba_page_bytes(self, cfg: ModelConfig) -> int:
        """Gated DeltaNet state of one layer for one request: conv (model dtype) + SSM (f32)."""
        conv = (cfg.linear_conv_kernel_dim - 1) * cfg.gdn_conv_dim * self.model_dtype_bytes
        ssm = cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * self.ssm_state_bytes
        return conv + ssm

    def attention_block_size(self, cfg: ModelConfig, k: KVFormat, v: KVFormat) -> int:
        """16, or for GDN/Mamba hybrids the smallest multiple of 16 whose page holds one state."""
        if not cfg.count(LINEAR) or not self._attn_bytes_per_token(cfg, k, v):
            return self.block_size
        per_token = self._attn_bytes_per_token(cfg, k, v)
        needed = 16 * _cdiv(self.mamba_page_bytes(cfg), 16 * per_token)
        return max(self.block_size, needed)

    def groups(self, cfg: ModelConfig) -> tuple[int, dict[str, int]]:
        """(layers per group, number of groups per layer type) as _get_kv_cache_groups_uniform_page_size."""
        counts = {t: cfg.count(t) for t in (FULL, SLIDING, LINEAR) if cfg.count(t)}
        if not counts:
            return 0, {}
        lo, hi = min(counts.values()), max(counts.values())
        size = hi if hi < lo * 1.5 else lo
        return size, {t: _cdiv(n, size) for t, n in counts.items()}

    def request_blocks(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int) -> dict[str, int]:
        """Blocks one request of `context` tokens takes from the shared pool, per layer type."""
        bs = self.attention_block_size(cfg, k, v)
        _, n_groups = self.groups(cfg)
        out = {}
        for t, g in n_groups.items():
            if t == FULL:
                per_group = _cdiv(context, bs)
            elif t == SLIDING:  # SlidingWindowSpec.max_memory_usage_bytes: window-1 + one prefill chunk
                tokens = min(cfg.sliding_window - 1 + self.max_num_batched_tokens, context)
                per_group = min(_cdiv(context, bs), _cdiv(tokens, bs) + 1)
            else:  # no prefix caching: one state block per request
                per_group = 1
            out[t] = g * per_group
        return out

    def block_bytes(self, cfg: ModelConfig, k: KVFormat, v: KVFormat) -> int:
        """Bytes of one pool block: one page for every layer slot of a group."""
        size, _ = self.groups(cfg)
        per_token = self._attn_bytes_per_token(cfg, k, v)
        page = self.attention_block_size(cfg, k, v) * per_token if per_token else self.mamba_page_bytes(cfg)
        return page * size

    def allocate(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int, sequences: int,
                 mtp: bool = False) -> Allocation:
        if mtp and cfg.mtp_layers:  # the MTP drafter's attention layers join the full-attention type
            cfg = replace(cfg, layer_types=cfg.layer_types + (FULL,) * cfg.mtp_layers,
                          num_kv_heads=cfg.num_kv_heads + (max(cfg.num_kv_heads),) * cfg.mtp_layers,
                          num_layers=cfg.num_layers + cfg.mtp_layers)
        blocks = self.request_blocks(cfg, k, v, context)
        bb = self.block_bytes(cfg, k, v)
        attn_blocks = sum(n for t, n in blocks.items() if t != LINEAR) * sequences
        kf, vf = k.vector_bytes(cfg.head_dim), v.vector_bytes(cfg.head_dim)
        attn = attn_blocks * bb
        kb = attn * kf // (kf + vf) if attn else 0
        bs = self.attention_block_size(cfg, k, v)
        cells = {t: n // max(1, self.groups(cfg)[1][t]) * bs * sequences for t, n in blocks.items() if t != LINEAR}
        return Allocation(kb, attn - kb, blocks.get(LINEAR, 0) * sequences * bb, self.runtime_bytes(cfg), cells)

    # --- what comes off the top before the KV pool --------------------------------------------
    def activation_bytes(self, cfg: ModelConfig) -> int:
        """Estimated torch peak of the profiling forward: max_num_batched_tokens tokens + the sampler."""
        tokens = self.max_num_batched_tokens
        hidden = tokens * activations_per_token(cfg) * self.model_dtype_bytes
        sampler = min(tokens, self.max_num_seqs) * cfg.vocab_size * 4 * 2  # f32 logits + probabilities
        return hidden + sampler

    def non_torch_bytes(self) -> int:
        """Estimated CUDA context / NCCL memory outside torch (llm-d capacity planner: 0.15 / 0.6 GiB)."""
        return int(0.15 * GIB) if self.tp == 1 else int(0.6 * GIB)

    def runtime_bytes(self, cfg: ModelConfig) -> int:
        return self.activation_bytes(cfg) + self.non_torch_bytes()

    def pool_limit(self, memory_bytes: int) -> int:
        """The instance cap: gpu_memory_utilization x total memory (vLLM's `requested_memory`)."""
        return ceil(memory_bytes * self.gpu_memory_utilization)

    def assumptions(self) -> dict[str, str]:
        return {
            "kv": f"exact for vLLM's rules: blocks of {self.block_size} tokens from one pool shared by equal-size "
                  "layer groups; sliding-window layers take window-1 + max_num_batched_tokens tokens (+1 block); "
                  "GDN hybrids raise the attention block so one page holds a state, state pages padded to match",
            "state": f"exact for vLLM's rules: one state block per request (no prefix caching), conv state at "
                     f"{self.model_dtype_bytes} bytes and SSM state at {self.ssm_state_bytes} bytes per value",
            "runtime": f"estimated: activation peak of a {self.max_num_batched_tokens}-token profiling forward "
                       f"(4 x hidden + 2 x widest projection per token, bf16) plus the sampler for "
                       f"{self.max_num_seqs} sequences (f32 logits and probabilities), plus "
                       f"{self.non_torch_bytes() / GIB:.2f} GiB non-torch memory; CUDA graphs not counted",
            "budget": f"exact rule: vLLM caps the instance at gpu_memory_utilization = {self.gpu_memory_utilization} "
                      "of total GPU memory",
        }

    def place(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, tensors: Sequence[PlacedTensor], budget: Budget,
              mtp: bool = False, pad: Callable[[int], int] = aligned) -> TensorParallel:
        if budget.device is not None and budget.device.kind != "gpu":
            raise LowbitError(f"the vLLM engine model is for GPUs; {budget.device.name} is not one "
                              f"({budget.device.kind}); use --engine llama.cpp")
        return TensorParallel(replace(self, tp=budget.gpus), cfg, k, v, tensors, budget, mtp, pad)


# ---------------------------------------------------------------------------------------------
# Tensor parallel (vLLM)
# ---------------------------------------------------------------------------------------------


def shard_config(cfg: ModelConfig, tp: int) -> ModelConfig:
    """One tensor-parallel rank's share of the model, as vLLM splits it.

    Attention heads, GDN heads, MLP and expert widths and the vocabulary are divided by `tp`. KV heads
    are divided too, or replicated (one per rank) when there are fewer KV heads than ranks.
    """
    if tp == 1:
        return cfg
    name = cfg.name

    def need(what: str, n: int) -> None:
        if n % tp:
            raise LowbitError(f"{name}: {what} = {n} cannot be split evenly over {tp} GPUs "
                              f"(tensor parallel needs it divisible by the GPU count)")

    need("attention heads", cfg.num_heads)
    kv_heads = []
    for h in cfg.num_kv_heads:
        if h and h % tp and tp % h:
            raise LowbitError(f"{name}: {h} KV heads over {tp} GPUs: vLLM needs one to divide the other")
        kv_heads.append(0 if h == 0 else max(1, h // tp))
    for what, n in (("Gated DeltaNet key heads", cfg.linear_num_key_heads),
                    ("Gated DeltaNet value heads", cfg.linear_num_value_heads)):
        if n:
            need(what, n)
    for what, n in (("MLP width", cfg.intermediate_size), ("expert width", cfg.moe_intermediate_size),
                    ("shared expert width", cfg.shared_expert_intermediate_size)):
        if n:
            need(what, n)
    return replace(
        cfg,
        num_heads=cfg.num_heads // tp,
        num_kv_heads=tuple(kv_heads),
        intermediate_size=cfg.intermediate_size // tp,
        moe_intermediate_size=cfg.moe_intermediate_size // tp,
        shared_expert_intermediate_size=cfg.shared_expert_intermediate_size // tp,
        linear_num_key_heads=cfg.linear_num_key_heads // tp,
        linear_num_value_heads=cfg.linear_num_value_heads // tp,
        vocab_size=_cdiv(cfg.vocab_size, tp),
    )


class TensorParallel:
    """vLLM's placement: tensor parallel over the budget's GPUs (vLLM's sharding, KV heads replicated when
    fewer than GPUs), the instance capped at gpu_memory_utilization of each GPU."""

    split_assumption = ("estimated: vLLM tensor parallel: matrices split over the GPUs, vectors and routers "
                        "replicated, KV heads split or replicated")

    def __init__(self, engine: VLLM, cfg: ModelConfig, k: KVFormat, v: KVFormat, tensors: Sequence[PlacedTensor],
                 budget: Budget, mtp: bool, pad: Callable[[int], int]):
        self.engine, self.cfg, self.k, self.v, self.mtp, self.pad = engine, cfg, k, v, mtp, pad
        self.rank_cfg = shard_config(cfg, engine.tp)
        self.limit = engine.pool_limit(budget.memory_bytes)
        self.rank_weights = sum(self._rank_bytes(t) for t in tensors)

    def _rank_bytes(self, t: PlacedTensor) -> int:
        tp = self.engine.tp
        if tp == 1 or len(t.shape) == 1 or "ffn_gate_inp" in t.name:
            return self.pad(t.bytes)  # replicated: vectors and routers
        if re.search(r"attn_(k|v)\.weight$", t.name):
            full = max(self.cfg.num_kv_heads)
            per_rank = max(1, full // tp)
            return self.pad(-(-t.bytes * per_rank // full))
        return self.pad(-(-t.bytes // tp))

    def need(self, context: int, users: int = 1) -> Need:
        a = self.engine.allocate(self.rank_cfg, self.k, self.v, context, users, self.mtp)
        w = self.rank_weights
        tp = self.engine.tp
        shares = (GpuShare(w, a.kv_bytes, a.state_bytes, a.runtime_bytes),) * tp if tp > 1 else ()
        return Need(w + a.kv_bytes + a.state_bytes + a.runtime_bytes, 0, w, a.kv_bytes, a.state_bytes,
                    a.runtime_bytes, shares)

    def offload(self, context: int, users: int = 1) -> None:
        return None  # vLLM's CPU offload is not modelled


def engine_model(engine: str | Engine, **options) -> Engine:
    """The engine of that name (options go to its constructor), or the engine object itself."""
    if isinstance(engine, Engine):
        return replace(engine, **options) if options else engine
    key = str(engine).lower().replace("_", "").replace("-", "")
    if key in ("llama.cpp", "llamacpp", "llama"):
        return LlamaCpp(**options)
    if key == "vllm":
        return VLLM(**options)
    if key in ("transformers", "hf", "huggingface"):
        return Transformers(**options)
    raise LowbitError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
