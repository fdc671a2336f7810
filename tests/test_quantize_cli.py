"""`lowbit quantize` / `lowbit inspect` on the real GGUF files: the written bytes equal the planner's
prediction tensor by tensor, metadata and tokenizer survive, failures leave no file behind."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models.local import model_path
from lowbit.models.gguf_header import read_header
from lowbit.planning.planner import plan


@pytest.fixture(scope="module")
def gemma_q1(tmp_path_factory, gemma3_gguf):
    out = tmp_path_factory.mktemp("q") / "gemma-q1_0.gguf"
    assert main(["quantize", "gemma3-270m", "--to", "Q1_0", "-o", str(out), "--format", "json"]) == 0
    return out


def _assert_matches_plan(path, source, mix, pure=False):
    written = {t.name: t for t in read_header(path).tensors}
    predicted = plan(str(source), weights=mix, context=512, pure=pure)
    assert {t.name for t in predicted.tensors} == set(written)
    for t in predicted.tensors:
        assert (written[t.name].type_name, written[t.name].nbytes) == (t.type, t.bytes), t.name
    assert read_header(path).tensor_bytes == predicted.weights_bytes  # padded, byte for byte


def test_gemma3_q1_0_file_matches_the_planner(gemma_q1):
    _assert_matches_plan(gemma_q1, model_path("gemma3-270m"), "Q1_0")


def test_metadata_and_tokenizer_are_kept(gemma_q1):
    src, out = read_header(model_path("gemma3-270m")), read_header(gemma_q1)
    assert out.metadata["general.file_type"] == 40  # LLAMA_FTYPE_MOSTLY_Q1_0
    changed = {k for k in src.metadata if src.metadata[k] != out.metadata.get(k)}
    assert changed == {"general.file_type"}
    assert out.metadata["tokenizer.ggml.tokens.count"] == 262144
    assert out.data_offset == src.data_offset  # same header bytes: nothing dropped or added


def _raw(path, name):
    """(type, uint8 [rows, row_bytes]) of one tensor, read via the header's offsets (no full parse)."""
    h = read_header(path)
    t = next(t for t in h.tensors if t.name == name)
    rows = int(np.prod(t.shape[1:]))
    data = np.fromfile(path, dtype=np.uint8, count=t.nbytes, offset=h.data_offset + t.offset)
    return t.type_name, data.reshape(rows, -1)


def test_q1_0_tensor_bytes_are_the_reference_quantizer(gemma_q1):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from lowbit.quant import q1_0

    name = "blk.5.attn_q.weight"
    src_type, src = _raw(model_path("gemma3-270m"), name)
    out_type, out = _raw(gemma_q1, name)
    w = dequantize(src, GGMLQuantizationType[src_type]).astype(np.float32)
    assert out_type == "Q1_0" and np.array_equal(out, q1_0.quantize(w))


def test_inspect_reads_it_back(gemma_q1, capsys):
    import json

    assert main(["inspect", str(gemma_q1), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["mix"] == "Q1_0"
    assert info["types"]["Q1_0"]["tensors"] == 126
    assert info["types"]["Q1_0"]["bytes"] * 8 == info["types"]["Q1_0"]["params"] * 1.125


def test_smollm2_ternary_mix_uses_fallbacks_and_matches_the_planner(smollm2_gguf, tmp_path):
    out = tmp_path / "s.gguf"
    assert main(["quantize", "smollm2-135m", "--to", "TQ2_0", "--method", "absmean-group", "-o", str(out)]) == 0
    _assert_matches_plan(out, model_path("smollm2-135m"), "TQ2_0")
    types = {t.type_name for t in read_header(out).tensors}
    assert types == {"TQ2_0", "Q4_0", "Q8_0", "F32"}  # 576-wide rows fall back to Q4_0


def test_smollm2_q1_0_is_refused_like_llama_cpp(smollm2_gguf, tmp_path, capsys):
    out = tmp_path / "s.gguf"
    assert main(["quantize", "smollm2-135m", "--to", "Q1_0", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no fallback for Q1_0" in err
    assert list(tmp_path.iterdir()) == []


def test_pure_and_refusals(smollm2_gguf, tmp_path, capsys):
    out = tmp_path / "p.gguf"
    assert main(["quantize", "smollm2-135m", "--to", "Q4_0", "--pure", "-o", str(out)]) == 0
    _assert_matches_plan(out, model_path("smollm2-135m"), "Q4_0", pure=True)
    assert main(["quantize", "smollm2-135m", "--to", "Q4_0", "-o", str(out)]) == 2  # exists, no --force
    assert main(["quantize", "smollm2-135m", "--to", "Q4_K_M", "-o", str(tmp_path / "k.gguf")]) == 2  # no Q4_K quantizer
    assert main(["quantize", "gemma3-270m", "--to", "Q1_0", "--method", "rht", "-o", str(tmp_path / "r.gguf")]) == 2
    errs = [e for e in capsys.readouterr().err.splitlines() if e.startswith("lowbit: error:")]
    assert len(errs) == 3 and "exists" in errs[0] and "cannot quantize" in errs[1] and "not a llama.cpp format" in errs[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gguf"]


def test_a_failure_mid_write_leaves_nothing(smollm2_gguf, tmp_path, monkeypatch):
    from lowbit.quant import weights
    from lowbit.quant.quantize_file import quantize_file

    calls = {"n": 0}
    real = weights.quantize

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 20:
            raise LowbitError("simulated failure")
        return real(*a, **k)

    monkeypatch.setattr(weights, "quantize", flaky)
    with pytest.raises(LowbitError, match="simulated"):
        quantize_file(model_path("smollm2-135m"), "Q8_0", tmp_path / "x.gguf", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_not_a_gguf_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    assert main(["inspect", str(bad)]) == 2
    assert main(["quantize", str(bad), "--to", "Q8_0", "-o", str(tmp_path / "o.gguf")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
