"""file_bytes: the GGUF file a plan describes (header + tensor data, padded as GGUF pads)."""

from __future__ import annotations

import json

import pytest

from lowbit.errors import LowbitError
from lowbit.formats.weights import mix_for_ftype
from lowbit.models.catalog import resolve
from lowbit.planning.planner import header_estimate, plan

# HF configs of the two real models (their model pages), to plan them as a user with only config.json would
CONFIGS = {
    "smollm2": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "gemma3": dict(model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144, sliding_window=512,
                   sliding_window_pattern=6),
}


@pytest.fixture(params=["smollm2", "gemma3"])
def real(request, smollm2_gguf, gemma3_gguf):
    return request.param, {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}[request.param]


def test_file_bytes_of_a_gguf_is_its_size(real):
    _, path = real
    header = resolve(str(path)).gguf
    p = plan(str(path), mix_for_ftype(header.metadata["general.file_type"]).name, context=1)
    assert p.file_bytes == path.stat().st_size
    assert p.to_json()["file_bytes"] == p.file_bytes and p.header_bytes == header.data_offset


def _strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def _tokenizer_folder(tmp_path, name, path, with_tokenizer=True):
    """config.json as the model page has it, and a tokenizer.json holding the file's own vocabulary."""
    from gguf import GGUFReader

    (tmp_path / "config.json").write_text(json.dumps(CONFIGS[name]))
    if with_tokenizer:
        r = GGUFReader(str(path))
        model = {"type": "BPE", "vocab": {t: i for i, t in enumerate(_strings(r, "tokenizer.ggml.tokens"))}}
        if "tokenizer.ggml.merges" in r.fields:
            model["merges"] = [m.split(" ", 1) for m in _strings(r, "tokenizer.ggml.merges")]  # the newer pair form
        (tmp_path / "tokenizer.json").write_text(json.dumps({"model": model, "added_tokens": []}))
        if "tokenizer.chat_template" in r.fields:
            template = _strings(r, "tokenizer.chat_template")[0]
            (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return tmp_path


def test_config_with_tokenizer_json_computes_the_header(real, tmp_path):
    name, path = real
    folder = _tokenizer_folder(tmp_path, name, path)
    recipe = dict(pure=True, token_embedding_type="q8_0") if name == "smollm2" else {}
    mix = "Q4_1" if name == "smollm2" else "Q4_K_M"
    p = plan(str(folder), mix, context=1, **recipe)
    real_header = resolve(str(path)).gguf.data_offset
    # tokenizer and tensor infos exact: what is left is the estimate of the other metadata keys (~1.3 KB)
    assert abs(p.header_bytes - real_header) <= 512
    assert abs(p.file_bytes - path.stat().st_size) <= 512
    assert p.provenance()["gguf_header_bytes"].startswith("computed: tokenizer.json")
    assert not p.header_exact
    assert p.weights_bytes == plan(str(path), mix, context=1, **recipe).weights_bytes


def test_config_without_tokenizer_estimates_the_header_and_says_so(real, tmp_path):
    name, path = real
    folder = _tokenizer_folder(tmp_path, name, path, with_tokenizer=False)
    p = plan(str(folder), "Q8_0", context=1)
    real_header = resolve(str(path)).gguf.data_offset
    assert abs(p.header_bytes - real_header) / real_header < 0.05
    assert p.provenance()["gguf_header_bytes"].startswith("estimated (no tokenizer.json)")
    assert p.header_bytes == header_estimate(p.config)


def test_tokenizer_is_padded_to_the_models_vocab_and_read_as_the_converter_writes_it(tmp_path):
    cfg = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, vocab_size=8, tie_word_embeddings=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1},
                                                                   "merges": ["a b"]}}))
    small = plan(str(tmp_path), "F16", context=1).header_bytes
    # two more real tokens in place of [PAD2] and [PAD3] (6 bytes each) change the header by their lengths only
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1},
                                                                   "merges": ["a b"]},
                                                         "added_tokens": [{"id": 2, "content": "x" * 70},
                                                                          {"id": 3, "content": "y" * 70}]}))
    larger = plan(str(tmp_path), "F16", context=1).header_bytes
    assert larger - small in range(2 * (70 - 6) - 31, 2 * (70 - 6) + 32)  # padded to 32
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LowbitError, match="not valid JSON"):
        plan(str(tmp_path), "F16", context=1)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {}}}))
    with pytest.raises(LowbitError, match="no vocabulary"):
        plan(str(tmp_path), "F16", context=1)


def test_built_in_models_estimate_the_header_with_exact_tensor_infos():
    p = plan("qwen3.5-27b", "Q4_K_M", context=1)
    assert p.provenance()["gguf_header_bytes"].startswith("estimated")
    assert p.file_bytes == p.header_bytes + p.weights_bytes
    # about 11 MB of tokenizer for a 248K vocabulary
    assert 8e6 < p.header_bytes < 12e6
    with_vision = plan("qwen3.5-27b", "Q4_K_M", context=1, vision=True)
    assert with_vision.file_bytes == p.file_bytes < with_vision.header_bytes + with_vision.weights_bytes
