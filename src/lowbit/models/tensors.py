"""Tensor inventory: every tensor a model's GGUF holds, named and shaped as llama.cpp writes it.

Shapes are in ggml order (ne0 first: the contiguous row), so `shape[0]` decides block fit.
`kind` is the class the plan groups by. `stored_as` says what a converter writes for a tensor that
is never quantized: 1-D tensors, routers, conv kernels and non-`.weight` tensors stay F32
(convert_hf_to_gguf.py), everything else starts at the model's float type.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from lowbit.models.config import FULL, LINEAR, ModelConfig

EMBED, ATTN, GDN, SSM, MLP, EXPERTS, SHARED, ROUTER, NORM, OUTPUT, MTP, VISION = (
    "embeddings", "attention", "gated_deltanet", "mamba", "dense_mlp", "routed_experts", "shared_experts",
    "router", "norms", "output_head", "mtp", "vision_tower",
)
KINDS = (EMBED, ATTN, GDN, SSM, MLP, EXPERTS, SHARED, ROUTER, NORM, OUTPUT, MTP, VISION)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order
    kind: str
    layer: int = -1  # -1 for tensors outside the blocks
    f32_only: bool = False  # written as F32 by the converter and never quantized
    per_token_active: float = 1.0  # fraction of its parameters one token touches (MoE: top-k / n_expert)

    @property
    def n_params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _layer(cfg: ModelConfig, i: int, kind_override: str | None = None) -> list[Tensor]:
    """One decoder block `blk.i`; kind_override files everything under one class (the MTP block)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    out: list[Tensor] = []

    def add(suffix: str, shape: tuple[int, ...], kind: str, f32: bool = False, active: float = 1.0) -> None:
        out.append(Tensor(f"blk.{i}.{suffix}", shape, kind_override or kind, i, f32 or len(shape) == 1, active))

    add("attn_norm.weight", (h,), NORM)
    layer_type = cfg.layer_types[i] if i < cfg.num_layers else FULL
    if cfg.arch == "mamba2":  # llama.cpp mamba2 names; no attention and no MLP
        d_inner, groups, conv = cfg.gdn_value_dim, cfg.linear_num_key_heads, cfg.gdn_conv_dim
        heads = cfg.linear_num_value_heads
        add("ssm_in.weight", (h, 2 * d_inner + 2 * groups * cfg.linear_key_head_dim + heads), SSM)
        add("ssm_conv1d.weight", (cfg.linear_conv_kernel_dim, conv), SSM, f32=True)
        add("ssm_conv1d.bias", (conv,), SSM)
        add("ssm_dt.bias", (heads,), SSM)
        add("ssm_a", (1, heads), SSM, f32=True)
        add("ssm_d", (1, heads), SSM, f32=True)
        add("ssm_norm.weight", (d_inner // groups, groups), SSM, f32=True)
        add("ssm_out.weight", (d_inner, h), SSM)
        return out
    if layer_type == LINEAR:  # Gated DeltaNet, llama.cpp qwen35 names
        vd, nv, conv = cfg.gdn_value_dim, cfg.linear_num_value_heads, cfg.gdn_conv_dim
        add("attn_qkv.weight", (h, conv), GDN)
        add("attn_gate.weight", (h, vd), GDN)
        add("ssm_conv1d.weight", (cfg.linear_conv_kernel_dim, conv), GDN, f32=True)
        add("ssm_dt.bias", (nv,), GDN)
        add("ssm_a", (nv,), GDN)
        add("ssm_beta.weight", (h, nv), GDN)
        add("ssm_alpha.weight", (h, nv), GDN)
        add("ssm_norm.weight", (cfg.linear_value_head_dim,), GDN)
        add("ssm_out.weight", (vd, h), GDN)
    else:
        kv = cfg.num_kv_heads[i] if i < cfg.num_layers else max(cfg.num_kv_heads)
        q_out = cfg.num_heads * hd * (2 if cfg.attn_output_gate else 1)
        add("attn_q.weight", (h, q_out), ATTN)
        add("attn_k.weight", (h, kv * hd), ATTN)
        add("attn_v.weight", (h, kv * hd), ATTN)
        if cfg.attention_bias:
            add("attn_q.bias", (q_out,), ATTN)
            add("attn_k.bias", (kv * hd,), ATTN)
            add("attn_v.bias", (kv * hd,), ATTN)
        add("attn_output.weight", (cfg.num_heads * hd, h), ATTN)
        if cfg.qk_norm:
            add("attn_q_norm.weight", (hd,), NORM)
            add("attn_k_norm.weight", (hd,), NORM)
    # Qwen3.5 and Gemma 3 name the pre-FFN norm post_attention_norm / ffn_norm respectively.
    if cfg.arch.startswith("qwen35"):
        add("post_attention_norm.weight", (h,), NORM)
    elif cfg.arch == "gemma3":
        add("post_attention_norm.weight", (h,), NORM)
        add("ffn_norm.weight", (h,), NORM)
        add("post_ffw_norm.weight", (h,), NORM)
    else:
        add("ffn_norm.weight", (h,), NORM)

    if cfg.layer_is_moe(min(i, cfg.num_layers - 1)):
        e, ff, k = cfg.num_experts, cfg.moe_intermediate_size, cfg.num_experts_used
        add("ffn_gate_inp.weight", (h, e), ROUTER, f32=True)
        add("ffn_gate_exps.weight", (h, ff, e), EXPERTS, active=k / e)
        add("ffn_up_exps.weight", (h, ff, e), EXPERTS, active=k / e)
        add("ffn_down_exps.weight", (ff, h, e), EXPERTS, active=k / e)
        sh = cfg.shared_expert_intermediate_size
        if sh:
            add("ffn_gate_inp_shexp.weight", (h,), ROUTER)
            add("ffn_gate_shexp.weight", (h, sh), SHARED)
            add("ffn_up_shexp.weight", (h, sh), SHARED)
            add("ffn_down_shexp.weight", (sh, h), SHARED)
    else:
        ff = cfg.intermediate_size
        add("ffn_gate.weight", (h, ff), MLP)
        add("ffn_up.weight", (h, ff), MLP)
        add("ffn_down.weight", (ff, h), MLP)
    return out


def _vision(cfg: ModelConfig) -> list[Tensor]:
    """Qwen3-VL-style tower as llama.cpp's mmproj holds it (param counts as the HF checkpoint)."""
    v = cfg.vision
    assert v is not None
    hv, iv = v.hidden_size, v.intermediate_size
    merged = hv * v.spatial_merge_size**2
    out: list[Tensor] = []

    def add(name: str, shape: tuple[int, ...]) -> None:
        out.append(Tensor(f"v.{name}", shape, VISION, -1, len(shape) == 1))

    add("patch_embd.weight", (v.patch_size, v.patch_size, v.temporal_patch_size * v.in_channels, hv))
    add("patch_embd.bias", (hv,))
    add("position_embd.weight", (hv, v.num_position_embeddings))
    for b in range(v.depth):
        for norm in ("ln1", "ln2"):
            add(f"blk.{b}.{norm}.weight", (hv,))
            add(f"blk.{b}.{norm}.bias", (hv,))
        add(f"blk.{b}.attn_qkv.weight", (hv, 3 * hv))
        add(f"blk.{b}.attn_qkv.bias", (3 * hv,))
        add(f"blk.{b}.attn_out.weight", (hv, hv))
        add(f"blk.{b}.attn_out.bias", (hv,))
        add(f"blk.{b}.ffn_up.weight", (hv, iv))
        add(f"blk.{b}.ffn_up.bias", (iv,))
        add(f"blk.{b}.ffn_down.weight", (iv, hv))
        add(f"blk.{b}.ffn_down.bias", (hv,))
    add("post_ln.weight", (hv,))
    add("post_ln.bias", (hv,))
    add("mm.0.weight", (merged, merged))
    add("mm.0.bias", (merged,))
    add("mm.2.weight", (merged, v.out_hidden_size))
    add("mm.2.bias", (v.out_hidden_size,))
    return out


def inventory(cfg: ModelConfig, mtp: bool = False, vision: bool = False) -> list[Tensor]:
    """Every tensor of the model's text GGUF (plus its MTP block and mmproj tower when asked)."""
    return list(_inventory(cfg, mtp, vision))


@lru_cache(maxsize=64)  # simulate asks for the same model under several scenarios
def _inventory(cfg: ModelConfig, mtp: bool, vision: bool) -> tuple[Tensor, ...]:
    h = cfg.hidden_size
    tensors = [Tensor("token_embd.weight", (h, cfg.vocab_size), EMBED)]
    if cfg.extras.get("rope_freqs"):
        tensors.append(Tensor("rope_freqs.weight", (cfg.extras["rope_freqs"],), NORM, f32_only=True))
    tensors.append(Tensor("output_norm.weight", (h,), NORM, f32_only=True))
    if not cfg.tie_word_embeddings:
        tensors.append(Tensor("output.weight", (h, cfg.vocab_size), OUTPUT))
    for i in range(cfg.num_layers):
        tensors += _layer(cfg, i)
    if mtp:
        for j in range(cfg.mtp_layers):
            i = cfg.num_layers + j
            tensors += _layer(cfg, i, kind_override=MTP)
            tensors += [
                Tensor(f"blk.{i}.nextn.eh_proj.weight", (2 * h, h), MTP, i),
                Tensor(f"blk.{i}.nextn.enorm.weight", (h,), MTP, i, True),
                Tensor(f"blk.{i}.nextn.hnorm.weight", (h,), MTP, i, True),
                Tensor(f"blk.{i}.nextn.shared_head_norm.weight", (h,), MTP, i, True),
            ]
    if vision and cfg.vision is not None:
        tensors += _vision(cfg)
    return tuple(tensors)


def gguf_order(tensors: list[Tensor]) -> list[Tensor]:
    """llama.cpp's weights_map order (layer, then name) — the order its mix counters run in."""
    return sorted(tensors, key=lambda t: (t.layer, t.name))
