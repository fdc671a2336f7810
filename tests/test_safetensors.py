"""Local safetensors checkpoints: exact dtypes/shapes/bytes from headers, bounded against hostile files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models.safetensors import load_checkpoint, read_header
from lowbit.planning.planner import plan

H, L, HEADS, KV, HD, FF, V = 64, 2, 2, 1, 32, 128, 256
CONFIG = {"model_type": "qwen3", "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": HEADS,
          "num_key_value_heads": KV, "head_dim": HD, "intermediate_size": FF, "vocab_size": V,
          "max_position_embeddings": 4096, "tie_word_embeddings": False}


def _tensors():
    rng = np.random.default_rng(0)
    f16 = lambda *s: rng.standard_normal(s).astype(np.float16)  # noqa: E731
    f32 = lambda *s: np.ones(s, np.float32)  # noqa: E731
    out = {"model.embed_tokens.weight": f16(V, H), "model.norm.weight": f32(H), "lm_head.weight": f16(V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": f16(HEADS * HD, H), p + "self_attn.k_proj.weight": f16(KV * HD, H),
            p + "self_attn.v_proj.weight": f16(KV * HD, H), p + "self_attn.o_proj.weight": f16(H, HEADS * HD),
            p + "self_attn.q_norm.weight": f32(HD), p + "self_attn.k_norm.weight": f32(HD),
            p + "input_layernorm.weight": f32(H), p + "post_attention_layernorm.weight": f32(H),
            p + "mlp.gate_proj.weight": f16(FF, H), p + "mlp.up_proj.weight": f16(FF, H),
            p + "mlp.down_proj.weight": f16(H, FF),
        })
    return out


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-qwen3")
    tensors = _tensors()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(d / file))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}))
    (d / "config.json").write_text(json.dumps(CONFIG))
    return d, tensors


def test_headers_give_exact_dtypes_shapes_and_bytes(ckpt_dir):
    d, tensors = ckpt_dir
    ck = load_checkpoint(d)
    got = {t.name: (t.dtype, t.shape, t.nbytes) for t in ck.tensors}
    want = {n: ({np.float16: "F16", np.float32: "F32"}[a.dtype.type], a.shape, a.nbytes) for n, a in tensors.items()}
    assert got == want
    assert ck.total_bytes == sum(a.nbytes for a in tensors.values())


def test_simulator_inventory_counts_the_same_parameters(ckpt_dir):
    d, _ = ckpt_dir
    assert plan(str(d), context=1).params_total == load_checkpoint(d).params


def test_fit_stored_charges_the_checkpoint_bytes(ckpt_dir, capsys):
    d, tensors = ckpt_dir
    assert main(["fit", str(d), "--weights", "stored", "--memory", "1GiB", "--context", "1024", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weights"] == "stored" and out["fits"]
    assert out["breakdown"]["weights_bytes"] == sum(a.nbytes for a in tensors.values())
    assert main(["fit", str(d), "--weights", "stored", "--device", "h100-80gb", "--engine", "vllm", "--gpus", "2",
                 "--format", "json"]) == 0
    tp = json.loads(capsys.readouterr().out)
    vectors = sum(a.nbytes for a in tensors.values() if a.ndim == 1)
    matrices = sum(a.nbytes for a in tensors.values() if a.ndim == 2)
    kv = sum(a.nbytes for n, a in tensors.items() if "k_proj" in n or "v_proj" in n)
    # matrices halve over 2 GPUs, vectors replicate, and the single KV head is replicated on both GPUs
    assert tp["breakdown"]["weights_bytes"] == vectors + (matrices - kv) // 2 + kv


def test_plan_stored_charges_the_checkpoint_bytes(ckpt_dir):
    d, tensors = ckpt_dir
    p = plan(str(d), "stored", context=1024)
    assert p.weights_bytes == sum(a.nbytes for a in tensors.values())  # safetensors are not padded
    assert p.params_total == sum(a.size for a in tensors.values()) and p.scenario.mix.name == "stored"
    assert plan(str(d), context=1024).scenario.mix.name == "Q4_K_M"  # a folder is planned as a GGUF would be


def _write(path, header_bytes, body=b""):
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + body)


@pytest.mark.parametrize("header, body, needle", [
    (b"{not json", b"", "not valid JSON"),
    (json.dumps({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}).encode(), b"\0" * 4, "outside"),
    (json.dumps({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 8]}}).encode(), b"\0" * 8, "unknown dtype"),
    (json.dumps({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 6]}}).encode(), b"\0" * 6, "needs 8"),
    (json.dumps({"w": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 0]}}).encode(), b"", "invalid shape"),
])
def test_hostile_headers_are_one_clear_error(tmp_path, header, body, needle):
    p = tmp_path / "x.safetensors"
    _write(p, header, body)
    with pytest.raises(LowbitError, match=needle):
        read_header(p)


def test_header_length_beyond_the_file_is_refused_without_reading(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(LowbitError, match="impossible"):
        read_header(p)


def test_index_naming_files_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../evil.safetensors"}}))
    with pytest.raises(LowbitError, match="implausible"):
        load_checkpoint(tmp_path)
