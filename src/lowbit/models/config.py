"""ModelConfig: the architecture facts the simulator needs, read from metadata only.

Two readers fill the same dataclass: `from_hf_config` (a Hugging Face config.json dict; the built-in
catalog ships as such files) and `from_gguf_metadata` (a GGUF header's key/values). Nothing here
looks at a model's name to decide its shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError
from lowbit.safe_read import is_dir, read_bounded

FULL, SLIDING, LINEAR = "full_attention", "sliding_attention", "linear_attention"

# HF model_type -> the llama.cpp architecture its GGUF uses.
HF_TO_GGUF_ARCH = {
    "llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3moe",
    "gemma3": "gemma3", "gemma3_text": "gemma3",
    "qwen3_5": "qwen35", "qwen3_5_text": "qwen35", "qwen3_5_moe": "qwen35moe", "qwen3_5_moe_text": "qwen35moe",
    "mamba2": "mamba2",
}
GGUF_ARCHES = sorted(set(HF_TO_GGUF_ARCH.values()))
MAX_LAYERS = 4096  # far beyond any real model; guards hostile inputs
MAX_DIM = 1 << 24


@dataclass(frozen=True)
class VisionConfig:
    """Qwen3-VL-style vision tower (what llama.cpp ships as the mmproj file)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    num_position_embeddings: int = 2304


@dataclass(frozen=True)
class ModelConfig:
    name: str
    arch: str  # llama.cpp architecture name (llama, qwen2, qwen3, qwen3moe, gemma3, qwen35, qwen35moe)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: tuple[int, ...]  # per layer (0 for layers without KV)
    head_dim: int
    intermediate_size: int  # dense MLP width (0 when every layer is MoE)
    layer_types: tuple[str, ...]
    tie_word_embeddings: bool
    max_context: int = 0  # the trained maximum (0: not stated); see max_context_from
    sliding_window: int = 0
    # Mixture of experts
    num_experts: int = 0
    num_experts_used: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    moe_layers: tuple[bool, ...] = ()  # per layer: routed experts here?
    # Qwen3.5 specifics: Gated DeltaNet (linear attention) and gated full attention
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 0
    attn_output_gate: bool = False
    qk_norm: bool = False
    attention_bias: bool = False
    mtp_layers: int = 0
    vision: VisionConfig | None = None
    source: str = ""
    max_context_from: str = ""  # where max_context was read, as an error message names it
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    # --- derived facts -------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    def layer_is_moe(self, i: int) -> bool:
        return bool(self.moe_layers[i]) if i < len(self.moe_layers) else self.is_moe

    @property
    def gdn_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def gdn_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def gdn_conv_dim(self) -> int:
        return 2 * self.gdn_key_dim + self.gdn_value_dim

    def count(self, kind: str) -> int:
        return sum(1 for t in self.layer_types if t == kind)


# ---------------------------------------------------------------------------------------
# Hugging Face config.json
# ---------------------------------------------------------------------------------------


def _int(cfg: dict, key: str, default: int | None = None, lo: int = 0, hi: int = MAX_DIM) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise LowbitError(f"config is missing the required field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise LowbitError(f"config field {key!r} must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise LowbitError(f"config field {key!r} = {value} is outside [{lo}, {hi}]")
    return value


def from_hf_config(cfg: Any, name: str = "model") -> ModelConfig:
    if not isinstance(cfg, dict):
        raise LowbitError("config.json must hold a JSON object")
    top = cfg
    text = cfg.get("text_config") or cfg
    if not isinstance(text, dict):
        raise LowbitError("config field 'text_config' must be an object")
    model_type = str(top.get("model_type") or text.get("model_type") or "")
    if model_type not in HF_TO_GGUF_ARCH:
        what = (f"unsupported architecture {model_type!r}" if model_type else
                f"config has no model_type (architectures: {top.get('architectures')!r})")
        raise LowbitError(f"{what}; supported model_type values: {', '.join(sorted(HF_TO_GGUF_ARCH))}")
    arch = HF_TO_GGUF_ARCH[model_type]
    if arch == "mamba2":
        return _mamba2_from_hf(text, name)
    n_layers = _int(text, "num_hidden_layers", lo=1, hi=MAX_LAYERS)
    hidden = _int(text, "hidden_size", lo=1)
    heads = _int(text, "num_attention_heads", lo=1)
    kv = text.get("num_key_value_heads", heads)
    kv_heads = _int({"num_key_value_heads": kv}, "num_key_value_heads", lo=1)
    head_dim = text.get("head_dim") or hidden // heads
    head_dim = _int({"head_dim": head_dim}, "head_dim", lo=1)

    layer_types = _layer_types(text, arch, n_layers)
    n_experts = _int(text, "num_experts", text.get("num_local_experts", 0))
    moe_layers: tuple[bool, ...] = ()
    if n_experts > 1:
        step = _int(text, "decoder_sparse_step", 1, lo=1)
        mlp_only = text.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in mlp_only):
            raise LowbitError("config field 'mlp_only_layers' must be a list of layer indices")
        mlp_only = set(mlp_only)
        moe_layers = tuple((i not in mlp_only) and (i + 1) % step == 0 for i in range(n_layers))
    needs_dense = n_experts <= 1 or not all(moe_layers)
    tie = top.get("tie_word_embeddings", text.get("tie_word_embeddings", arch.startswith("gemma")))
    vision = None
    if isinstance(top.get("vision_config"), dict) and arch.startswith("qwen35"):
        v = top["vision_config"]
        vision = VisionConfig(
            depth=_int(v, "depth", lo=1, hi=MAX_LAYERS), hidden_size=_int(v, "hidden_size", lo=1),
            intermediate_size=_int(v, "intermediate_size", lo=1), num_heads=_int(v, "num_heads", lo=1),
            out_hidden_size=_int(v, "out_hidden_size", hidden, lo=1), patch_size=_int(v, "patch_size", 16, lo=1),
            temporal_patch_size=_int(v, "temporal_patch_size", 2, lo=1),
            spatial_merge_size=_int(v, "spatial_merge_size", 2, lo=1), in_channels=_int(v, "in_channels", 3, lo=1),
            num_position_embeddings=_int(v, "num_position_embeddings", 2304, lo=1),
        )
    is_qwen35 = arch.startswith("qwen35")
    max_context, max_context_from = derived_max_context(text, model_type)
    cfg = ModelConfig(
        name=name,
        arch=arch,
        vocab_size=_int(text, "vocab_size", top.get("vocab_size"), lo=1),
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=tuple(0 if t == LINEAR else kv_heads for t in layer_types),
        head_dim=head_dim,
        intermediate_size=_int(text, "intermediate_size", None if needs_dense else 0),
        layer_types=layer_types,
        tie_word_embeddings=bool(tie),
        max_context=max_context,
        max_context_from=max_context_from,
        sliding_window=_int(text, "sliding_window", 0) if SLIDING in layer_types else 0,
        num_experts=n_experts,
        num_experts_used=_int(text, "num_experts_per_tok", 0) if n_experts > 1 else 0,
        moe_intermediate_size=_int(text, "moe_intermediate_size", 0) if n_experts > 1 else 0,
        shared_expert_intermediate_size=_int(text, "shared_expert_intermediate_size", 0) if n_experts > 1 else 0,
        moe_layers=moe_layers,
        linear_num_key_heads=_int(text, "linear_num_key_heads", 0),
        linear_num_value_heads=_int(text, "linear_num_value_heads", 0),
        linear_key_head_dim=_int(text, "linear_key_head_dim", 0),
        linear_value_head_dim=_int(text, "linear_value_head_dim", 0),
        linear_conv_kernel_dim=_int(text, "linear_conv_kernel_dim", 0),
        attn_output_gate=bool(text.get("attn_output_gate", is_qwen35)),
        qk_norm=arch in ("qwen3", "qwen3moe", "gemma3") or is_qwen35,
        attention_bias=bool(text.get("attention_bias", arch == "qwen2")),
        mtp_layers=_int(text, "mtp_num_hidden_layers", 0, hi=MAX_LAYERS),
        vision=vision,
        source="config.json",
    )
    validate(cfg)
    return cfg


def derived_max_context(text: dict, model_type: str = "") -> tuple[int, str]:
    """The longest context a config.json allows, derived as vLLM derives max_model_len, and where it comes from.

    max_position_embeddings, scaled by a rope_scaling `factor` that extends it (yarn scales
    original_max_position_embeddings); llama3, longrope and su already count their scaling in
    max_position_embeddings, and Gemma 3's is already scaled (vllm/config.py, _get_and_verify_max_len).
    """
    base = _int(text, "max_position_embeddings", 0)
    where = "max_position_embeddings in config.json"
    scaling = text.get("rope_scaling")
    if not base or not isinstance(scaling, dict) or "gemma3" in model_type:
        return base, where
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    factor = scaling.get("factor", 1.0)
    if kind in ("su", "longrope", "llama3") or isinstance(factor, bool) or not isinstance(factor, (int, float)) \
            or not math.isfinite(factor) or factor <= 1:
        return base, where
    if kind == "yarn":
        base = _int(scaling, "original_max_position_embeddings", base, lo=1)
        where = "rope_scaling (yarn): original_max_position_embeddings x factor in config.json"
    else:
        where = f"max_position_embeddings x rope_scaling factor ({kind}) in config.json"
    return min(int(base * factor), MAX_DIM * 64), where


def _mamba2_from_hf(cfg: dict, name: str) -> ModelConfig:
    """Mamba-2: every layer is a recurrent SSM block (no attention, no MLP); the SSM state maps onto the
    same fields as Gated DeltaNet: groups x state as keys, heads x head_dim (= d_inner) as values."""
    n_layers = _int(cfg, "num_hidden_layers", lo=1, hi=MAX_LAYERS)
    hidden = _int(cfg, "hidden_size", lo=1)
    heads = _int(cfg, "num_heads", lo=1)
    head_dim = _int(cfg, "head_dim", lo=1)
    d_inner = _int(cfg, "expand", 2, lo=1, hi=64) * hidden
    if heads * head_dim != d_inner:
        raise LowbitError(f"num_heads x head_dim ({heads * head_dim}) must equal expand x hidden_size ({d_inner})")
    out = ModelConfig(
        name=name, arch="mamba2", vocab_size=_int(cfg, "vocab_size", lo=1), hidden_size=hidden,
        num_layers=n_layers, num_heads=heads, num_kv_heads=(0,) * n_layers, head_dim=head_dim,
        intermediate_size=0, layer_types=(LINEAR,) * n_layers,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        max_context=_int(cfg, "max_position_embeddings", 0), max_context_from="max_position_embeddings in config.json",
        linear_num_key_heads=_int(cfg, "n_groups", 1, lo=1), linear_key_head_dim=_int(cfg, "state_size", lo=1),
        linear_num_value_heads=heads, linear_value_head_dim=head_dim,
        linear_conv_kernel_dim=_int(cfg, "conv_kernel", 4, lo=1), source="config.json",
    )
    validate(out)
    return out


def validate(cfg: ModelConfig) -> None:
    """Facts that must hold together, whichever reader filled the config."""
    if cfg.num_heads % max(1, max(cfg.num_kv_heads, default=1)) and max(cfg.num_kv_heads, default=0):
        raise LowbitError(f"{cfg.num_heads} attention heads cannot share {max(cfg.num_kv_heads)} KV heads evenly")
    if cfg.is_moe:
        if not 1 <= cfg.num_experts_used <= cfg.num_experts:
            raise LowbitError(f"experts per token ({cfg.num_experts_used}) must be from 1 to {cfg.num_experts}")
        if cfg.moe_intermediate_size <= 0:
            raise LowbitError("a mixture-of-experts config needs moe_intermediate_size > 0")
    if LINEAR in cfg.layer_types and min(cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                                         cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim) <= 0:
        raise LowbitError("linear-attention layers need linear_num_key_heads, linear_num_value_heads, "
                          "linear_key_head_dim, linear_value_head_dim and linear_conv_kernel_dim > 0")
    if SLIDING in cfg.layer_types and cfg.sliding_window <= 0:
        raise LowbitError("sliding-attention layers need sliding_window > 0")
    if cfg.arch != "mamba2" and cfg.intermediate_size <= 0 and not all(cfg.layer_is_moe(i) for i in range(cfg.num_layers)):
        raise LowbitError("dense layers need intermediate_size > 0")


def every_nth_full(n_layers: int, n: int, other: str) -> tuple[str, ...]:
    """Qwen3.5's full_attention_interval and Gemma 3's sliding_window_pattern: layer i is full attention when
    (i + 1) % n == 0, `other` otherwise (HF and llama.cpp use the same rule)."""
    return tuple(FULL if (i + 1) % n == 0 else other for i in range(n_layers))


def _layer_types(text: dict, arch: str, n_layers: int) -> tuple[str, ...]:
    explicit = text.get("layer_types")
    if explicit is not None:
        if not isinstance(explicit, list) or len(explicit) != n_layers:
            raise LowbitError(f"layer_types must list {n_layers} entries (one per layer)")
        known = {FULL, SLIDING, LINEAR}
        bad = [t for t in explicit if not isinstance(t, str) or t not in known]
        if bad:
            raise LowbitError(f"unknown layer type {bad[0]!r} in layer_types; known: {', '.join(sorted(known))}")
        return tuple(explicit)
    if arch.startswith("qwen35"):
        interval = _int(text, "full_attention_interval", 4, lo=1)
        return every_nth_full(n_layers, interval, LINEAR)
    if arch == "gemma3":
        pattern = _int(text, "sliding_window_pattern", 6, lo=1)
        return every_nth_full(n_layers, pattern, SLIDING)
    window = text.get("sliding_window")
    use_swa = text.get("use_sliding_window", arch == "llama")  # mistral sets a window; qwen2 gates it
    if window and use_swa:
        return (SLIDING,) * n_layers
    return (FULL,) * n_layers


MAX_CONFIG_BYTES = 16 << 20  # a config.json is a few KB


def load_config_file(path: Path) -> ModelConfig:
    if is_dir(path):
        path = path / "config.json"
    raw = read_bounded(path, MAX_CONFIG_BYTES, "config.json")  # a FIFO or /dev/zero is refused, never read
    try:
        cfg = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise LowbitError(f"{path} is not valid JSON: {e}") from None
    return from_hf_config(cfg, name=path.parent.name if path.name == "config.json" else path.stem)


# ---------------------------------------------------------------------------------------
# GGUF metadata
# ---------------------------------------------------------------------------------------


def from_gguf_metadata(meta: dict[str, Any], name: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHES:
        raise LowbitError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHES)}")

    def get(key: str, default: Any = None, required: bool = False) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            if required:
                raise LowbitError(f"GGUF metadata is missing {full}")
            return default
        return meta[full]

    def as_int(key: str, default: Any = None, required: bool = False, lo: int = 0, hi: int = MAX_DIM) -> int:
        return _int({key: get(key, default, required)}, key, lo=lo, hi=hi)

    n_all = as_int("block_count", required=True, lo=1, hi=MAX_LAYERS)
    nextn = as_int("nextn_predict_layers", 0, hi=n_all - 1)
    n_layers = n_all - nextn
    hidden = as_int("embedding_length", required=True, lo=1)
    heads = as_int("attention.head_count", as_int("ssm.time_step_rank", 0) if arch == "mamba2" else None, lo=1)
    kv_raw = get("attention.head_count_kv", heads)
    if isinstance(kv_raw, list):
        if len(kv_raw) < n_layers:
            raise LowbitError("GGUF head_count_kv array is shorter than block_count")
        kv_list = [_int({"head_count_kv": k}, "head_count_kv") for k in kv_raw[:n_layers]]
    else:
        kv_list = [_int({"head_count_kv": kv_raw}, "head_count_kv", lo=1)] * n_layers
    head_dim = as_int("attention.key_length", (as_int("ssm.inner_size", 0) if arch == "mamba2" else hidden) // heads, lo=1)
    vocab = get("vocab_size")
    if vocab is None:
        vocab = meta.get("tokenizer.ggml.tokens.count", 0)
    vocab = _int({"vocab_size": vocab}, "vocab_size", lo=1)
    window = as_int("attention.sliding_window", 0)

    if arch == "mamba2":
        layer_types = (LINEAR,) * n_layers
    elif arch.startswith("qwen35"):
        interval = as_int("full_attention_interval", 4, lo=1)
        layer_types = every_nth_full(n_layers, interval, LINEAR)
    elif arch == "gemma3":
        pattern = get("attention.sliding_window_pattern", 6)  # absent in older files: llama.cpp's default, 6
        if isinstance(pattern, list):  # per layer: true = sliding window
            if len(pattern) < n_layers:
                raise LowbitError("GGUF sliding_window_pattern array is shorter than block_count")
            layer_types = tuple(SLIDING if bool(p) else FULL for p in pattern[:n_layers])
        else:
            pattern = _int({"sliding_window_pattern": pattern}, "sliding_window_pattern", lo=1)
            layer_types = every_nth_full(n_layers, pattern, SLIDING)
    else:
        layer_types = (SLIDING,) * n_layers if window else (FULL,) * n_layers
    n_experts = as_int("expert_count", 0)
    d_inner = as_int("ssm.inner_size", 0)
    d_state = as_int("ssm.state_size", 0)
    n_group = as_int("ssm.group_count", 0)
    dt_rank = as_int("ssm.time_step_rank", 0)
    has_output = bool(meta.get("lowbit.has_output_tensor", True))
    cfg = ModelConfig(
        name=name,
        arch=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=tuple(0 if t == LINEAR else k for t, k in zip(layer_types, kv_list)),
        head_dim=head_dim,
        intermediate_size=as_int("feed_forward_length", 0),
        layer_types=layer_types,
        tie_word_embeddings=not has_output,
        max_context=as_int("context_length", 0),
        max_context_from=f"{arch}.context_length in the GGUF",
        sliding_window=window if SLIDING in layer_types else 0,
        num_experts=n_experts,
        num_experts_used=as_int("expert_used_count", 0),
        moe_intermediate_size=as_int("expert_feed_forward_length", 0),
        shared_expert_intermediate_size=as_int("expert_shared_feed_forward_length", 0),
        moe_layers=(True,) * n_layers if n_experts > 1 and arch != "qwen3moe" else (),
        linear_num_key_heads=n_group,
        linear_num_value_heads=dt_rank,
        linear_key_head_dim=d_state,
        linear_value_head_dim=(d_inner // dt_rank if arch == "mamba2" else d_state) if d_inner and dt_rank else 0,
        linear_conv_kernel_dim=as_int("ssm.conv_kernel", 0),
        attn_output_gate=arch.startswith("qwen35"),
        qk_norm=arch in ("qwen3", "qwen3moe", "gemma3", "qwen35", "qwen35moe"),
        attention_bias=arch == "qwen2",
        mtp_layers=nextn,
        source="gguf",
    )
    validate(cfg)
    return cfg


def params_label(n: int) -> str:
    """Human size label, e.g. 752393024 -> '752M'."""
    if n <= 0:
        return "0"
    exp = min(int(math.log10(n)) // 3, 4)
    return f"{n / 10 ** (3 * exp):.3g}{' KMBT'[exp]}".strip()
