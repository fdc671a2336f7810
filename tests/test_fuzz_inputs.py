"""Property tests: no input makes the config loader or the GGUF header reader raise anything but
LowbitError, hang, or allocate without bound."""

from __future__ import annotations

import json
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.errors import LowbitError
from lowbit.models.config import from_hf_config
from lowbit.models.gguf_header import read_header
from lowbit.planning.planner import plan

FIELDS = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
          "intermediate_size", "head_dim", "layer_types", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
          "sliding_window", "tie_word_embeddings", "linear_num_value_heads", "full_attention_interval", "text_config",
          "vision_config", "mlp_only_layers", "decoder_sparse_step"]
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["llama", "qwen3_5", "qwen3_5_moe", "gemma3", "qwen3_moe", "mistral", "full_attention"]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6),
    max_leaves=20,
)
BASE = {"model_type": "qwen3_5_moe", "hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1000, "num_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 64, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
        "linear_key_head_dim": 32, "linear_value_head_dim": 32, "linear_conv_kernel_dim": 4}
# a valid config with some fields replaced by arbitrary values (or nested under text_config)
configs = st.dictionaries(st.sampled_from(FIELDS), values, max_size=4).map(lambda d: {**BASE, **d}) | st.dictionaries(
    st.sampled_from(FIELDS), values, max_size=len(FIELDS))
small_valid = st.fixed_dictionaries({
    "model_type": st.sampled_from(["llama", "qwen2", "qwen3", "mistral", "gemma3_text"]),
    "hidden_size": st.sampled_from([64, 128, 256]), "num_hidden_layers": st.integers(1, 6),
    "num_attention_heads": st.sampled_from([1, 2, 4]), "vocab_size": st.integers(1, 5000),
    "intermediate_size": st.sampled_from([64, 96, 256]), "sliding_window": st.sampled_from([32, 4096]),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_config_loader_raises_only_lowbit_error(cfg):
    start = time.perf_counter()
    try:
        c = from_hf_config(cfg)
        from lowbit.models.catalog import ResolvedModel

        plan(ResolvedModel(c), "Q8_0", context=64)
    except LowbitError:
        pass
    assert time.perf_counter() - start < 2.0


@settings(max_examples=60, deadline=None)
@given(small_valid, st.sampled_from(["Q4_K_M", "Q8_0", "IQ1_S", "F16", "TQ2_0"]))
def test_valid_small_configs_plan_consistently(cfg, weights):
    from lowbit.models.catalog import ResolvedModel

    p = plan(ResolvedModel(from_hf_config(cfg)), weights, context=128)
    assert p.weights_bytes >= sum(t.bytes for t in p.tensors) > 0
    assert p.params_total == sum(_numel(t.shape) for t in p.tensors)


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# --- GGUF headers ---------------------------------------------------------------------------

def _kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + payload


u64 = st.integers(0, 2**64 - 1)
kv_entries = st.lists(
    st.tuples(st.binary(max_size=24), st.integers(0, 15), st.binary(max_size=40)).map(lambda t: _kv(*t))
    | st.tuples(st.binary(max_size=8), st.integers(0, 13), u64).map(
        lambda t: _kv(t[0], 9, struct.pack("<IQ", t[1], t[2]))),  # arrays with arbitrary declared lengths
    max_size=5,
)
tensor_entries = st.lists(
    st.tuples(st.binary(max_size=16), st.integers(0, 6), st.lists(u64, min_size=0, max_size=5),
              st.integers(0, 50), u64).map(
        lambda t: struct.pack("<Q", len(t[0])) + t[0] + struct.pack("<I", t[1])
        + b"".join(struct.pack("<Q", d) for d in t[2]) + struct.pack("<IQ", t[3], t[4])),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(u64, u64, kv_entries, tensor_entries, st.binary(max_size=64), st.integers(0, 4))
def test_gguf_header_reader_raises_only_lowbit_error(tmp_path_factory, n_tensors, n_kv, kvs, tensors, tail, version):
    path = tmp_path_factory.mktemp("gguf") / "fuzz.gguf"
    path.write_bytes(struct.pack("<IIQQ", 0x46554747, version, n_tensors, n_kv) + b"".join(kvs) + b"".join(tensors) + tail)
    start = time.perf_counter()
    try:
        read_header(path)
    except LowbitError:
        pass
    assert time.perf_counter() - start < 2.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 3000), st.integers(0, 255))
def test_mutated_real_header_raises_only_lowbit_error(tmp_path_factory, smollm2_gguf, position, byte):
    """Flip one byte of a real model's header (SmolLM2, first 3000 bytes: counts, keys, types)."""
    with open(smollm2_gguf, "rb") as f:
        head = bytearray(f.read(1 << 20))
    head[position] = byte
    path = tmp_path_factory.mktemp("gguf") / "mutated.gguf"
    path.write_bytes(bytes(head))
    try:
        plan(str(path), "Q4_K_M", context=256)  # header -> config -> inventory -> mix
    except LowbitError:
        pass


def test_json_config_roundtrip_of_builtin_is_identical(tmp_path):
    from importlib import resources

    from lowbit.models.catalog import resolve

    raw = resources.files("lowbit.models").joinpath("catalog/qwen3.5-35b-a3b.json").read_text()
    (tmp_path / "config.json").write_text(json.dumps(json.loads(raw)))
    a = plan("qwen3.5-35b-a3b", context=1024)
    b = plan(str(tmp_path), context=1024)  # a folder holding config.json
    assert (a.weights_bytes, a.kv_bytes, a.params_total) == (b.weights_bytes, b.kv_bytes, b.params_total)
    assert resolve(str(tmp_path)).config.layer_types == resolve("qwen3.5-35b-a3b").config.layer_types
