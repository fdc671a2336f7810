"""How each inference engine really allocates the KV cache, recurrent state and runtime buffers.

The same model, formats and context cost different bytes under different engines
(../shared/research/calculators.md §3.3, §3.4, §6):

- llama.cpp: the KV cache is padded to 256 cells; a sliding-window layer holds `window + n_ubatch`
  cells per sequence (never more than the full context); Gated DeltaNet / Mamba state is f32, one
  copy per sequence; the input embedding table always stays in host memory. The planner's own
  functions (`lowbit.planning.planner`) implement this; `LlamaCpp` exposes them per layer.
- vLLM: paged KV in blocks of 16 tokens from one shared pool; hybrid models group layers into
  equally sized groups sharing one page size, and for GDN/Mamba hybrids the attention block is
  raised until an attention page holds a whole recurrent state (the state page padded to match);
  the instance is capped at `gpu_memory_utilization` of the GPU and the activation peak of a
  `max_num_batched_tokens` dummy forward comes off the top.

Bytes that follow from a format definition and the engine's rules are exact for that rule; the
activation peak and non-torch memory are estimates, and `assumptions()` names each one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil

from lowbit.errors import LowbitError
from lowbit.formats.kv import KVFormat
from lowbit.models.config import FULL, LINEAR, SLIDING, ModelConfig

ENGINES = ("llama.cpp", "vllm")
GIB = 1 << 30


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


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


# ---------------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------------


class LlamaCpp:
    name = "llama.cpp"

    def allocate(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int, sequences: int,
                 mtp: bool = False) -> Allocation:
        from lowbit.planning import planner as P

        kb, cells = P.kv_cache_bytes(cfg, k, context, sequences, mtp)
        vb, _ = P.kv_cache_bytes(cfg, v, context, sequences, mtp)
        return Allocation(kb, vb, P.recurrent_state_bytes(cfg, sequences), P.runtime_bytes(cfg, sequences), cells)

    def layer_cache_bytes(self, cfg: ModelConfig, k: KVFormat, v: KVFormat, context: int, sequences: int,
                          mtp: bool = False) -> list[int]:
        """KV + recurrent state of each block `blk.i` (MTP blocks appended), the same rule as the planner.

        llama.cpp keeps a layer's cache on the device that holds the layer (`offload_kqv`), so this is
        what moves with a layer when layers are split or offloaded.
        """
        from lowbit.planning import planner as P

        per_vec = k.vector_bytes(cfg.head_dim) + v.vector_bytes(cfg.head_dim)
        n_linear = cfg.count(LINEAR)
        state_per_layer = P.recurrent_state_bytes(cfg, sequences) // n_linear if n_linear else 0
        types = list(cfg.layer_types) + [FULL] * (cfg.mtp_layers if mtp else 0)
        cells, heads = P.layer_cells(cfg, context, mtp), P.layer_kv_heads(cfg, mtp)
        return [state_per_layer if t == LINEAR else c * sequences * h * per_vec for t, c, h in zip(types, cells, heads)]

    def host_tensors(self, tensor_names: list[str]) -> set[str]:
        """Tensors llama.cpp keeps in host memory even with every layer on the GPU.

        "there is very little benefit to offloading the input layer, so always keep it on the CPU"
        (llama.cpp src/llama-model.cpp, dev_input = cpu). A tied model's output copy still goes to
        the GPU (TENSOR_DUPLICATED), so its embedding bytes count on both sides.
        """
        return {n for n in tensor_names if n == "token_embd.weight"}

    def assumptions(self) -> dict[str, str]:
        from lowbit.planning.planner import RUNTIME_ASSUMPTION

        return {
            "kv": "exact for llama.cpp: cells padded to 256 (flash attention); sliding-window layers hold "
                  "window + 512 cells per sequence; KV stays with its layer's device",
            "state": "exact for llama.cpp: conv window + recurrent state of Gated DeltaNet or Mamba layers, f32, one per sequence",
            "runtime": RUNTIME_ASSUMPTION,
            "placement": "llama.cpp keeps token_embd.weight in host memory (input layer always on the CPU)",
        }


# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLM:
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
        from lowbit.planning.planner import activations_per_token

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


def engine_model(name: str, **options) -> LlamaCpp | VLLM:
    key = str(name).lower().replace("_", "").replace("-", "")
    if key in ("llama.cpp", "llamacpp", "llama"):
        return LlamaCpp()
    if key == "vllm":
        return VLLM(**options)
    raise LowbitError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
