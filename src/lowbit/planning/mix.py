"""llama.cpp's per-tensor type rules for a quantization mix, in one place.

A transcription of `src/llama-quant.cpp` (ggml-org/llama.cpp @0c1e57098, the same rules as @007dbbf3):
tensor_allows_quantization, tensor_get_category, llama_tensor_get_type (the options of a
`lowbit.planning.recipe.Recipe`), llama_tensor_get_type_impl, tensor_type_fallback and
tensor_requires_imatrix. Structure and branch order follow the C++ so the two can be read side by
side; only the branches reachable from the mixes in lowbit.formats.weights are kept. Rules change
between llama.cpp versions: this is that commit, checked tensor by tensor against its
`llama-quantize --dry-run` (benchmarks/llamacpp_quantize_types.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from lowbit.errors import LowbitError
from lowbit.formats.weights import Mix, WeightType, weight_type
from lowbit.models.config import ModelConfig
from lowbit.models.tensors import Tensor, gguf_order
from lowbit.planning.recipe import Recipe

T = weight_type  # short alias: T("Q6_K")

_NOT_QUANTIZED_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight", ".position_embd", ".patch_embd", ".patch_merger",
)
_LOW_IQ = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_FALLBACK = {
    **{t: "IQ4_NL" for t in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")},
    **{t: "Q4_0" for t in ("Q2_K", "Q3_K", "TQ1_0", "TQ2_0")},
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}


@lru_cache(maxsize=8192)
def allows_quantization(t: Tensor) -> bool:
    """tensor_allows_quantization: 2-D/3-D `.weight` tensors that are not norms, routers, convs, ..."""
    if len(t.shape) < 2 or not t.name.endswith("weight"):
        return False
    if any(s in t.name for s in _NOT_QUANTIZED_SUBSTRINGS):
        return False
    return t.name not in ("pos_embd.weight", "token_types.weight")


@lru_cache(maxsize=8192)
def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _is_attn_v(cat: str) -> bool:
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class _State:
    n_attention_wv: int
    n_layer_all: int
    has_tied_embeddings: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0


def _layer_of(t: Tensor, counter: int, n_expert: int) -> int:
    # llama.cpp parses blk.N for MoE models (experts are not consecutive), else uses the counter.
    return t.layer if n_expert > 1 else counter


def _get_type_impl(st: _State, new: WeightType, t: Tensor, m: Mix, cfg: ModelConfig, cat: str, imatrix: bool,
                   output_type: WeightType | None = None) -> WeightType:
    f = m.name
    n_expert = max(1, cfg.num_experts)
    n_gqa = cfg.num_heads // max(1, max(cfg.num_kv_heads))
    is_70b = cfg.arch == "llama" and cfg.num_layers == 80 and cfg.num_heads != max(cfg.num_kv_heads)

    if cat == "output" or (st.has_tied_embeddings and cat == "token_embd"):
        if output_type is not None:  # --output-tensor-type also types a tied embedding (the fallback still applies)
            return output_type
        if f == "MXFP4_MOE":
            return T("Q8_0")
        if t.shape[0] % new.block:
            return T("Q8_0")
        if f in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
            return T("Q5_K")
        return T("Q6_K") if new.name != "Q8_0" else new
    if f == "MXFP4_MOE":
        return T("MXFP4") if len(t.shape) > 2 and t.shape[2] > 1 else T("Q8_0")
    if cat == "token_embd":
        if f in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return T("Q2_K")
        if f in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return T("IQ3_S")
        if f in ("TQ1_0", "TQ2_0", "Q2_0"):
            return T("Q4_K")
        return new
    if f in _LOW_IQ:
        if _is_attn_v(cat):
            if n_gqa >= 4 or cfg.num_experts >= 4:
                new = T("Q4_K")
            else:
                new = T("IQ3_S") if f in ("IQ2_S", "IQ2_M") else T("Q2_K")
            st.i_attention_wv += 1
        elif cfg.num_experts == 8 and cat == "attn_k":
            new = T("Q4_K")
        elif cat == "ffn_down":
            if st.i_ffn_down < st.n_layer_all // 8:
                new = T("IQ3_S") if f in ("IQ2_S", "IQ2_M") else T("Q2_K")
            st.i_ffn_down += 1
        elif cat == "attn_output":
            if cfg.num_experts == 8:
                new = T("Q5_K")
            elif f in ("IQ1_S", "IQ1_M"):
                new = T("IQ2_XXS")
            elif f in ("IQ2_S", "IQ2_M"):
                new = T("IQ3_S")
        return new
    if _is_attn_v(cat):
        if f == "Q2_K":
            new = T("Q4_K") if n_gqa >= 4 else T("Q3_K")
        elif f == "Q2_K_S" and n_gqa >= 4:
            new = T("Q4_K")
        elif f == "IQ3_XXS":
            new = T("Q4_K") if n_gqa >= 4 else (T("IQ3_S") if not imatrix else T("IQ3_XXS"))
        elif f in ("IQ3_XS", "IQ3_S") and n_gqa >= 4:
            new = T("Q4_K")
        elif f == "IQ3_M":
            new = T("Q4_K")
        elif f == "Q3_K_M":
            new = T("Q5_K") if st.i_attention_wv < 2 else T("Q4_K")
        elif f == "Q3_K_L":
            new = T("Q5_K")
        elif f in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
            new = T("Q5_K")
        elif f in ("Q4_K_M", "Q5_K_M") and _use_more_bits(st.i_attention_wv, st.n_attention_wv):
            new = T("Q6_K")
        elif f == "Q4_K_S" and st.i_attention_wv < 4:
            new = T("Q5_K")
        if is_70b and new.name in ("Q3_K", "Q4_K"):
            new = T("Q5_K")
        if cfg.num_experts == 8:
            new = T("Q8_0")
        st.i_attention_wv += 1
        return new
    if cat == "attn_k":
        if cfg.num_experts == 8:
            return T("Q8_0")
        if f == "IQ3_XS":
            return T("IQ3_XXS")
        if f == "IQ3_XXS":
            return T("IQ2_S")
        return new
    if cat == "attn_q":
        if f == "IQ3_XS":
            return T("IQ3_XXS")
        if f == "IQ3_XXS":
            return T("IQ2_S")
        return new
    if cat == "ffn_down":
        i, n = _layer_of(t, st.i_ffn_down, n_expert), st.n_layer_all
        if f == "Q2_K":
            new = T("Q3_K")
        elif f == "Q2_K_S":
            if i < n // 8:
                new = T("Q4_K")
        elif f == "IQ3_XXS" and not imatrix:
            new = T("Q4_K") if i < n // 8 else T("Q3_K")
        elif f == "Q3_K_M":
            new = T("Q5_K") if i < n // 16 else T("Q4_K")  # non-Falcon
        elif f == "IQ3_M" and (i < n // 8 or (cfg.num_experts == 8 and _use_more_bits(i, n))):
            new = T("Q4_K")
        elif f == "Q3_K_L":
            new = T("Q5_K")
        elif f == "Q4_K_M":
            if _use_more_bits(i, n):
                new = T("Q6_K")
        elif i < n // 8 and f in ("IQ4_NL", "IQ4_XS") and not imatrix:
            new = T("Q5_K")
        elif f == "Q5_K_M" and _use_more_bits(i, n):
            new = T("Q6_K")
        elif f == "Q4_K_S" and i < n // 8:
            new = T("Q5_K")
        elif f in ("Q4_0", "Q5_0") and imatrix and i < n // 8:
            new = T("Q4_1") if f == "Q4_0" else T("Q5_1")
        st.i_ffn_down += 1
        return new
    if cat == "attn_output":
        if cfg.num_experts == 8:
            if f in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS"):
                new = T("Q5_K")
        else:
            new = {"Q2_K": T("Q3_K"), "IQ3_XXS": T("IQ3_S"), "Q3_K_M": T("Q4_K"), "Q3_K_L": T("Q5_K"),
                   "IQ3_M": T("Q4_K")}.get(f, new)
        return new
    if cat in ("ffn_gate", "ffn_up"):
        # counters advance in tensor order, as llama.cpp's i_ffn_gate / i_ffn_up do
        counter = "i_ffn_gate" if cat == "ffn_gate" else "i_ffn_up"
        i, n = _layer_of(t, getattr(st, counter), n_expert), st.n_layer_all
        if f == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            new = T("IQ3_XXS")
        setattr(st, counter, getattr(st, counter) + 1)
    # attn_qkv's own branch is unreachable in this llama.cpp version (the attn_v branch shadows it).
    return new


_NEEDS_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")


def requires_imatrix(name: str, target: WeightType, m: Mix) -> bool:
    """tensor_requires_imatrix: llama-quantize refuses to write these target types without an importance
    matrix (Q2_K only inside a Q2_K_S file); the embedding and output tensors never need one."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    return target.name in _NEEDS_IMATRIX or (target.name == "Q2_K" and m.name == "Q2_K_S")


def fallback(t: Tensor, new: WeightType) -> WeightType:
    """tensor_type_fallback: a row that is not whole blocks gets a smaller-block type, else F16."""
    if t.shape[0] % new.block == 0:
        return new
    if new.name not in _FALLBACK:
        if new.block <= 32:  # already a 32-block type: nothing smaller to demote to
            return T("F16")
        raise LowbitError(
            f"llama.cpp has no fallback for {new.name}: tensor {t.name} has rows of {t.shape[0]} values, "
            f"not a multiple of {new.block}"
        )
    fb = T(_FALLBACK[new.name])
    return fb if t.shape[0] % fb.block == 0 else T("F16")


def _explicit(t: Tensor, qtype: WeightType, option: str) -> WeightType:
    # llama.cpp returns --token-embedding-type / --output-tensor-type before its fallback: a row that is
    # not whole blocks of that type stops the quantization (ggml_row_size asserts).
    if t.shape[0] % qtype.block:
        raise LowbitError(f"llama-quantize cannot write {t.name} as {qtype.name} ({option}): its rows of "
                          f"{t.shape[0]} values are not whole blocks of {qtype.block}, and an explicit type gets "
                          f"no fallback")
    return qtype


@dataclass(frozen=True)
class Assignment:
    """Each tensor's type, and whether an importance matrix was given (or assumed: `imatrix_assumed`)."""

    types: dict[str, WeightType]
    imatrix: bool
    imatrix_assumed: bool


def _assign(ordered: list[Tensor], cats: dict[str, str], m: Mix, cfg: ModelConfig, recipe: Recipe, imatrix: bool,
            float_type: str) -> tuple[dict[str, WeightType], list[tuple[str, str]]]:
    """llama_tensor_get_type over the file in weights_map order; also the (tensor, type) pairs that need
    an importance matrix."""
    st = _State(
        n_attention_wv=sum(1 for c in cats.values() if _is_attn_v(c)),
        n_layer_all=cfg.num_layers + sum(1 for i in {t.layer for t in ordered} if i >= cfg.num_layers),
        has_tied_embeddings="output" not in cats.values(),
    )
    out_type = T(recipe.output_tensor_type) if recipe.output_tensor_type else None
    emb_type = T(recipe.token_embedding_type) if recipe.token_embedding_type else None
    types: dict[str, WeightType] = {}
    needs: list[tuple[str, str]] = []
    for t in ordered:
        source = T("F32") if t.f32_only or len(t.shape) == 1 else T(float_type)
        if not allows_quantization(t) or (recipe.leave_output_tensor and t.name == "output.weight"):
            types[t.name] = source
            continue
        cat = cats[t.name]
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it
        if emb_type is not None and cat == "token_embd" and not (
                t.name == "per_layer_token_embd.weight" and recipe.named(t.name)):
            new = _explicit(t, emb_type, "--token-embedding-type")
        elif out_type is not None and cat == "output":
            new = _explicit(t, out_type, "--output-tensor-type")
        else:
            new = m.default
            if new.quantized:
                manual = recipe.override(t.name)
                if manual is not None:  # a manual type skips the mix rules (and their layer counters)
                    new = manual
                elif not recipe.pure:
                    new = _get_type_impl(st, new, t, m, cfg, cat, imatrix, out_type)
                new = fallback(t, new)
        types[t.name] = new
        if requires_imatrix(t.name, new, m):
            needs.append((t.name, new.name))
    return types, needs


def assign(tensors: list[Tensor], m: Mix, cfg: ModelConfig, recipe: Recipe = Recipe(),
           float_type: str = "F16") -> Assignment:
    """The type llama-quantize gives each tensor under `recipe`, from an F16/BF16/F32 source file.

    Tensors that are never quantized keep what the converter wrote: F32 for 1-D tensors, routers and
    conv kernels, `float_type` otherwise. With `recipe.imatrix=None` an importance matrix is assumed
    exactly when llama-quantize would refuse the recipe without one; with `imatrix=False` such a
    recipe is refused, as llama-quantize refuses it.
    """
    ordered = gguf_order(tensors)
    cats = {t.name: category(t.name) for t in ordered}
    if recipe.imatrix is not None:
        types, needs = _assign(ordered, cats, m, cfg, recipe, recipe.imatrix, float_type)
        if needs and not recipe.imatrix:
            name, qtype = needs[0]
            raise LowbitError(f"llama-quantize refuses {m.name} here without an importance matrix: {name} would be "
                              f"{qtype} ({len(needs)} tensors need one); give --imatrix, or choose another mix")
        return Assignment(types, recipe.imatrix, False)
    types, needs = _assign(ordered, cats, m, cfg, recipe, False, float_type)
    if not needs:
        return Assignment(types, False, True)
    types, _ = _assign(ordered, cats, m, cfg, recipe, True, float_type)
    return Assignment(types, True, True)


def assign_types(
    tensors: list[Tensor], m: Mix, cfg: ModelConfig, pure: bool = False, imatrix: bool | None = None,
    float_type: str = "F16",
) -> dict[str, WeightType]:
    """`assign` with only `--pure` and the importance matrix: each tensor's type, keyed by name."""
    return assign(tensors, m, cfg, Recipe(pure=pure, imatrix=imatrix), float_type).types
