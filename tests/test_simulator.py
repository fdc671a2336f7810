"""The exact simulator: parameter counts, KV bytes, llama.cpp's mix table, and real GGUF files."""

from __future__ import annotations

import pytest

from lowbit.models.catalog import QWEN35_FAMILY, resolve
from lowbit.models.config import from_hf_config
from lowbit.planning.planner import plan
from lowbit.planning.simulate import simulate


@pytest.mark.parametrize(
    "model, kw, expected",
    [
        # anchors independent of lowbit's formulas: a checkpoint size, a model card, llama.cpp's own print
        ("qwen3.5-0.8b", {"vision": True, "mtp": True}, 873_438_784),  # = 1,746,882,752-byte BF16 checkpoint
        ("Qwen/Qwen3.5-9B", {"vision": True}, 9_409_813_744),  # 9B-Base parameter count as published
        ("qwen3.5-122b-a10b", {}, 122_111_526_912),  # llama.cpp "122.11B"
    ],
)
def test_parameter_counts(model, kw, expected):
    assert plan(model, context=1, **kw).params_total == expected


def test_params_total_counts_exactly_the_tensors_whose_bytes_are_counted():
    p = plan("qwen3.5-35b-a3b", context=1, vision=True, mtp=True)
    assert p.params_total == sum(_numel(t.shape) for t in p.tensors)
    assert p.weights_bytes == sum((t.bytes + 31) // 32 * 32 for t in p.tensors)


def test_moe_active_parameters_follow_top_k():
    p = plan("qwen3.5-122b-a10b", context=1)
    cfg = p.config
    experts = sum(_numel(t.shape) for t in p.tensors if t.kind == "routed_experts")
    assert p.params_active == p.params_total - experts + experts * cfg.num_experts_used // cfg.num_experts
    assert 9e9 < p.params_active < 11e9  # "A10B"


# llama.cpp f16 KV bytes per 1,024 tokens (LlamaBarn ctxBytesPer1kTokens, brief S6)
KV_PER_1K = {
    "qwen3.5-0.8b": 12_582_912, "qwen3.5-2b": 12_582_912, "qwen3.5-4b": 33_554_432, "qwen3.5-9b": 33_554_432,
    "qwen3.5-27b": 67_108_864, "qwen3.5-35b-a3b": 20_971_520, "qwen3.5-122b-a10b": 25_165_824,
    "qwen3.5-397b-a17b": 31_457_280,
}


@pytest.mark.parametrize("model", QWEN35_FAMILY)
def test_f16_kv_per_1k_tokens_matches_llama_cpp(model):
    assert plan(model, kv="f16", context=1024).kv_bytes == KV_PER_1K[model]


def test_kv_scales_with_sequences_and_mtp_adds_one_layer():
    one = plan("qwen3.5-27b", context=4096)
    four = plan("qwen3.5-27b", context=4096, sequences=4)
    assert four.kv_bytes == 4 * one.kv_bytes and four.state_bytes == 4 * one.state_bytes
    with_mtp = plan("qwen3.5-27b", context=4096, mtp=True)
    assert with_mtp.kv_bytes == one.kv_bytes * 17 // 16  # 16 full-attention layers + 1 MTP layer


def test_asymmetric_kv_and_turbo_bytes():
    p = plan("qwen3.5-122b-a10b", kv_k="q8_0", kv_v="turbo3", context=262_144)
    cells_heads = 12 * 2 * 262_144  # full layers x KV heads x tokens
    assert p.kv_k_bytes == cells_heads * 272  # q8_0: 8 blocks of 34 bytes per 256-value head
    assert p.kv_v_bytes == cells_heads * 100  # turbo3: 2 blocks of (48 index bytes + fp16 norm)


def test_gated_deltanet_state_matches_llama_cpp_formula():
    # 0.8B: 18 GDN layers; conv (4-1) x 6144 and state 16 heads x 128 x 128, f32
    assert plan("qwen3.5-0.8b", context=1).state_bytes == 18 * (3 * 6144 + 16 * 128 * 128) * 4


# llama.cpp tools/quantize/README.md: Llama-3.1-8B bits per weight and GiB for every mix it lists
README_BPW = {
    "IQ1_S": (2.0042, 1.87), "IQ1_M": (2.1460, 2.01), "IQ2_XXS": (2.3824, 2.23), "IQ2_XS": (2.5882, 2.42),
    "IQ2_S": (2.7403, 2.56), "IQ2_M": (2.9294, 2.74), "Q2_K_S": (2.9697, 2.78), "Q2_K": (3.1593, 2.95),
    "IQ3_XXS": (3.2548, 3.04), "IQ3_XS": (3.4977, 3.27), "IQ3_S": (3.6606, 3.42), "IQ3_M": (3.7628, 3.52),
    "Q3_K_S": (3.6429, 3.41), "Q3_K_M": (3.9960, 3.74), "Q3_K_L": (4.2979, 4.02), "IQ4_XS": (4.4597, 4.17),
    "IQ4_NL": (4.6818, 4.38), "Q4_K_S": (4.6672, 4.36), "Q4_K_M": (4.8944, 4.58), "Q5_K_S": (5.5704, 5.21),
    "Q5_K_M": (5.7036, 5.33), "Q6_K": (6.5633, 6.14), "Q8_0": (8.5008, 7.95), "F16": (16.0005, 14.96),
}


@pytest.mark.parametrize("mix", sorted(README_BPW))
def test_llama_31_8b_bits_per_weight_match_llama_cpp_readme(mix):
    p = plan("llama-3.1-8b", mix, context=1)
    bpw, gib = README_BPW[mix]
    assert round(p.weights_bytes * 8 / p.params_total, 4) == bpw
    assert round(p.weights_bytes / 2**30, 2) == gib


def test_pure_gives_every_quantizable_tensor_the_default_type():
    p = plan("llama-3.1-8b", "Q4_K_M", pure=True, context=1)
    assert {t.type for t in p.tensors if len(t.shape) > 1} == {"Q4_K"}


def test_q1_0_mix_keeps_output_at_q6_k_and_untied_embedding_at_q1_0():
    types = {t.name: t.type for t in plan("qwen3.5-9b", "Q1_0", context=1).tensors}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q1_0"
    tied = {t.name: t.type for t in plan("qwen3.5-4b", "Q1_0", context=1).tensors}
    assert "output.weight" not in tied and tied["token_embd.weight"] == "Q6_K"


def test_q1_0_refuses_rows_that_are_not_whole_blocks():
    from lowbit.errors import LowbitError

    cfg = dict(model_type="llama", vocab_size=1000, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
               num_attention_heads=9, num_key_value_heads=3)
    with pytest.raises(LowbitError, match="no fallback for Q1_0"):
        plan_from(cfg, "Q1_0")


def plan_from(cfg_dict, weights):
    from lowbit.models.catalog import ResolvedModel

    return plan(ResolvedModel(from_hf_config(cfg_dict, "x")), weights, context=1)


# --- the real GGUF files -----------------------------------------------------------------


def test_real_gguf_every_tensor_type_and_total_bytes_are_predicted(real_gguf):
    """From the file's architecture metadata and file type alone, predict its tensors."""
    from lowbit.formats.weights import mix_for_ftype

    resolved = resolve(str(real_gguf))
    header = resolved.gguf
    m = mix_for_ftype(header.metadata["general.file_type"])
    p = plan(resolved, m.name, context=1)
    predicted = {t.name: (t.type, t.shape) for t in p.tensors}
    actual = {t.name: (t.type_name, t.shape) for t in header.tensors}
    assert predicted == actual
    assert p.weights_bytes == header.tensor_bytes
    assert header.data_offset + header.tensor_bytes == header.file_size == real_gguf.stat().st_size


def test_gemma3_sliding_layers_are_charged_by_the_window(gemma_gguf):
    p = plan(str(gemma_gguf), "Q4_K_M", context=32_768)
    cfg = p.config
    assert cfg.count("sliding_attention") == 15 and cfg.count("full_attention") == 3 and cfg.sliding_window == 512
    per_cell = cfg.num_kv_heads[0] * cfg.head_dim * 2 * 2  # K and V, f16
    swa_cells = 1024  # llama.cpp: pad(window 512 + n_ubatch 512, 256) per sequence
    assert p.kv_bytes == (3 * 32_768 + 15 * swa_cells) * per_cell
    assert plan(str(gemma_gguf), "Q4_K_M", context=300).kv_bytes == 18 * 512 * per_cell  # context below the window


def test_simulate_defaults_cover_the_family_in_two_scenarios():
    sim = simulate()
    assert sim.models() == QWEN35_FAMILY and [s.name for s in sim.scenarios] == ["today", "1bit-turbo"]
    for m in sim.models():
        today, after = sim.get(m, "today"), sim.get(m, "1bit-turbo")
        assert after.weights_bytes < today.weights_bytes and after.kv_bytes < today.kv_bytes
        assert today.state_bytes == after.state_bytes  # recurrent state stays f32 in llama.cpp


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _real(name):
    from lowbit.errors import LowbitError
    from lowbit.models.local import model_path

    try:
        return model_path(name)
    except LowbitError as e:
        pytest.skip(str(e))


@pytest.fixture(params=["smollm2-135m", "gemma3-270m"])
def real_gguf(request):
    return _real(request.param)


@pytest.fixture
def gemma_gguf():
    return _real("gemma3-270m")


def test_header_estimate_is_close_to_the_real_files(real_gguf):
    """The header estimate used for config-only models, checked against what real files hold."""
    from lowbit.planning.planner import header_estimate

    resolved = resolve(str(real_gguf))
    estimate = header_estimate(resolved.config)
    assert abs(estimate - resolved.gguf.data_offset) / resolved.gguf.data_offset < 0.05
    assert plan(resolved, "Q8_0", context=1).header_bytes == resolved.gguf.data_offset  # a file's own is exact


def test_mamba2_holds_state_not_kv(tmp_path):
    """Mamba-2 (state-spaces/mamba2-2.7b's config): no KV at any context; state from its SSM fields."""
    import json as _json

    cfg = {"model_type": "mamba2", "hidden_size": 2560, "num_hidden_layers": 64, "state_size": 128, "expand": 2,
           "n_groups": 1, "num_heads": 80, "head_dim": 64, "conv_kernel": 4, "vocab_size": 50288,
           "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(_json.dumps(cfg))
    short, long = plan(str(tmp_path), context=1024), plan(str(tmp_path), context=131_072, sequences=2)
    assert short.kv_bytes == long.kv_bytes == 0
    d_inner, conv_dim = 5120, 5120 + 2 * 128
    assert short.state_bytes == 64 * (3 * conv_dim + 128 * d_inner) * 4 and long.state_bytes == 2 * short.state_bytes
    # in_proj h x (2 d_inner + 2 groups state + heads); conv weight+bias; dt, A, D; norm; out_proj; layer norm
    per_layer = 2560 * (2 * d_inner + 256 + 80) + conv_dim * 5 + 3 * 80 + d_inner + d_inner * 2560 + 2560
    assert short.params_total == 50288 * 2560 + 2560 + 64 * per_layer


# Public HF configs and their published parameter counts (HF model pages): one per supported family.
PUBLIC = {
    "Qwen2.5-7B": (dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                        sliding_window=131072, use_sliding_window=False), 7_615_616_512),
    "Mistral-7B-v0.1": (dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                             tie_word_embeddings=False, sliding_window=4096), 7_241_732_096),
    "Qwen3-8B": (dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                      tie_word_embeddings=False), 8_190_735_360),
    "Qwen3-30B-A3B": (dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                           num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936,
                           tie_word_embeddings=False, num_experts=128, num_experts_per_tok=8,
                           moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=[]), 30_532_122_624),
    "gemma-3-270m": (dict(model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                          sliding_window=512, sliding_window_pattern=6), 268_098_176),
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_configs_give_published_parameter_counts(name):
    from lowbit.models.catalog import ResolvedModel

    cfg, expected = PUBLIC[name]
    assert plan(ResolvedModel(from_hf_config(cfg, name)), context=1).params_total == expected


def test_llama_cpp_charges_mistral_the_full_context_but_gemma3_its_window():
    """llama.cpp runs Mistral (GGUF arch `llama`) without a sliding-window cache; Gemma 3 with one."""
    from lowbit.models.catalog import ResolvedModel

    mistral = ResolvedModel(from_hf_config(PUBLIC["Mistral-7B-v0.1"][0], "m"))
    assert set(mistral.config.layer_types) == {"sliding_attention"}  # what the model was trained with
    p = plan(mistral, context=32_768)
    assert p.kv_bytes == 32 * 8 * 128 * 2 * 2 * 32_768  # every layer, the whole context
    gemma = ResolvedModel(from_hf_config(PUBLIC["gemma-3-270m"][0], "g"))
    assert plan(gemma, context=32_768).kv_cells == {"full_attention": 32_768, "sliding_attention": 1024}
