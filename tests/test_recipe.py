"""llama-quantize's options (the recipe): --tensor-type, --output-tensor-type, --token-embedding-type,
--leave-output-tensor, --pure and the importance matrix, with llama.cpp's semantics and refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models.catalog import resolve
from lowbit.planning.planner import plan
from lowbit.planning.recipe import Recipe, tensor_type_option


def _types(p):
    return {t.name: t.type for t in p.tensors}


def _file_types(path):
    return {t.name: t.type_name for t in resolve(str(path)).gguf.tensors}


# --- real files reproduced by a recipe --------------------------------------------------------------


def test_gemma3_q4_k_m_file_is_reproduced_from_q5_0_by_tensor_types(gemma3_gguf):
    """Gemma 3 270M Q4_K_M, written as a Q5_0 file with per-tensor overrides: the first matching pattern wins,
    so the layers named first get Q6_K, the rest of ffn_down Q4_K; Q6_K on 640-wide attn_v falls back to
    Q8_0 as llama.cpp's fallback does for a manual type too."""
    more_bits = "|".join(str(i) for i in (0, 1, 4, 7, 10, 13, 15, 16, 17))
    p = plan(str(gemma3_gguf), "Q5_0", context=1, tensor_types=[
        rf"blk\.({more_bits})\.(attn_v|ffn_down)=q6_k", "ffn_down=Q4_K", "attn_output=q4_k"])
    assert _types(p) == _file_types(gemma3_gguf)
    assert p.weights_bytes == resolve(str(gemma3_gguf)).gguf.tensor_bytes
    # the order matters: the general pattern first takes every ffn_down
    q = plan(str(gemma3_gguf), "Q5_0", context=1, tensor_types=[
        "ffn_down=Q4_K", rf"blk\.({more_bits})\.(attn_v|ffn_down)=q6_k", "attn_output=q4_k"])
    assert {t for n, t in _types(q).items() if "ffn_down" in n} == {"Q4_K"}


def test_smollm2_q4_1_file_is_pure_q4_1_with_a_q8_0_embedding(smollm2_gguf):
    file_types = _file_types(smollm2_gguf)
    p = plan(str(smollm2_gguf), "Q4_1", pure=True, token_embedding_type="q8_0", context=1)
    assert _types(p) == file_types
    assert _types(plan(str(smollm2_gguf), "Q4_1", pure=True, context=1))["token_embd.weight"] == "Q4_1"
    assert p.recipe.pure and p.recipe.token_embedding_type == "Q8_0"


# --- the importance matrix ---------------------------------------------------------------------------


def test_smollm2_iq3_xxs_with_and_without_an_importance_matrix(smollm2_gguf):
    """What `llama-quantize --dry-run --allow-requantize [--imatrix F] SmolLM2-135M...Q4_1.gguf IQ3_XXS`
    (llama.cpp 0c1e57098) printed: every 576-wide tensor falls back to IQ4_NL either way; ffn_down (1536 wide)
    is Q4_K in the first n_layer/8 = 3 layers and Q3_K after them without a matrix, IQ3_XXS with one. No
    tensor then needs a matrix, so llama.cpp makes both files."""
    without = plan(str(smollm2_gguf), "IQ3_XXS", imatrix=False, context=1)
    with_ = plan(str(smollm2_gguf), "IQ3_XXS", imatrix=True, context=1)
    down = lambda p: [p_t.type for p_t in sorted((t for t in p.tensors if "ffn_down" in t.name),  # noqa: E731
                                                  key=lambda t: int(t.name.split(".")[1]))]
    assert down(without) == ["Q4_K"] * 3 + ["Q3_K"] * 27
    assert down(with_) == ["IQ3_XXS"] * 30
    others = lambda p: Counter(t.type for t in p.tensors if "ffn_down" not in t.name)  # noqa: E731
    assert others(without) == others(with_) == Counter({"IQ4_NL": 180, "F32": 61, "Q8_0": 1})
    assert with_.weights_bytes < without.weights_bytes
    default = plan(str(smollm2_gguf), "IQ3_XXS", context=1)  # llama.cpp accepts it without: none assumed
    assert not default.recipe.imatrix and default.imatrix_assumed and _types(default) == _types(without)


def test_a_recipe_that_needs_an_importance_matrix_is_refused_without_one():
    # Qwen3.5-27B: 5120-wide rows are whole IQ3_XXS blocks, so ffn_gate/ffn_up stay IQ3_XXS, which needs a matrix
    with pytest.raises(LowbitError, match=r"refuses IQ3_XXS .*without an importance matrix: blk\.\d+\.\w+\.weight"):
        plan("qwen3.5-27b", "IQ3_XXS", imatrix=False, context=1)
    assumed = plan("qwen3.5-27b", "IQ3_XXS", context=1)
    assert assumed.recipe.imatrix and assumed.imatrix_assumed
    # Q2_K tensors need one only inside a Q2_K_S file
    plan("qwen3.5-27b", "Q2_K", imatrix=False, context=1)
    with pytest.raises(LowbitError, match="refuses Q2_K_S"):
        plan("qwen3.5-27b", "Q2_K_S", imatrix=False, context=1)
    # an override away from the low-bit types lifts the requirement, as it does in llama-quantize
    ok = plan("qwen3.5-27b", "IQ3_XXS", imatrix=False, context=1,
              tensor_types=["attn_q=q4_k", "attn_k=q4_k", "ffn_gate=q4_k", "ffn_up=q4_k", "ssm|attn_qkv|attn_gate=q4_k",
                            "ffn_down=q4_k"])
    assert "IQ3_XXS" not in {t.type for t in ok.tensors}


def test_imatrix_changes_q4_0_ffn_down_in_the_first_layers():
    """With a matrix, llama.cpp guards the first n_layer/8 ffn_down of a Q4_0 file with Q4_1."""
    a, b = plan("qwen3.5-27b", "Q4_0", imatrix=False, context=1), plan("qwen3.5-27b", "Q4_0", imatrix=True, context=1)
    n = a.config.num_layers
    diff = {t.name for t, u in zip(a.tensors, b.tensors) if t.type != u.type}
    assert diff == {f"blk.{i}.ffn_down.weight" for i in range(n // 8)}
    assert {t.type for t in b.tensors if t.name in diff} == {"Q4_1"}


# --- the per-tensor options ----------------------------------------------------------------------------


def test_a_manual_type_skips_the_layer_counters():
    """A tensor typed by --tensor-type does not run llama.cpp's mix rules, so its counter does not advance:
    in a Q4_K_M file every later attn_v-like tensor (attn_v, and Qwen3.5's attn_qkv) takes the
    use_more_bits decision of the one before it."""
    p = plan("qwen3.5-27b", "Q4_K_M", context=1)
    base = _types(p)
    moved = _types(plan("qwen3.5-27b", "Q4_K_M", context=1, tensor_types=[r"^blk\.3\.attn_v\.weight$=q8_0"]))
    counted = [t.name for t in p.tensors if re.search(r"attn_(v|qkv)\.weight$", t.name)]  # in llama.cpp's order
    k = counted.index("blk.3.attn_v.weight")
    assert moved[counted[k]] == "Q8_0"
    assert [moved[n] for n in counted[k + 1:]] == [base[n] for n in counted[k:-1]]
    assert {n for n in base if base[n] != moved[n]} - set(counted) == set()
    assert {base[n] for n in counted} == {"Q4_K", "Q6_K"}  # the shift is visible


def test_output_and_embedding_types_and_leave_output_tensor():
    p = plan("qwen3.5-27b", "Q4_K_M", context=1, output_tensor_type="q8_0", token_embedding_type="Q4_K")
    t = _types(p)
    assert t["output.weight"] == "Q8_0" and t["token_embd.weight"] == "Q4_K"
    assert _types(plan("qwen3.5-27b", "Q4_K_M", context=1))["output.weight"] == "Q6_K"
    left = _types(plan("qwen3.5-27b", "Q4_K_M", context=1, leave_output_tensor=True))
    assert left["output.weight"] == "F16"  # the converter's type, not quantized
    # --output-tensor-type wins over a --tensor-type naming output.weight; the embedding ignores patterns
    t = _types(plan("qwen3.5-27b", "Q4_K_M", context=1, output_tensor_type="q5_k", token_embedding_type="q5_k",
                    tensor_types=["output=q2_k", "token_embd=q2_k"]))
    assert t["output.weight"] == t["token_embd.weight"] == "Q5_K"


def test_output_type_also_types_a_tied_embedding_with_the_fallback(smollm2_gguf):
    # tied: token_embd is typed as the output tensor; Q4_K on 576-wide rows falls back to Q5_0
    assert _types(plan(str(smollm2_gguf), "Q4_K_M", context=1, output_tensor_type="q4_k"))["token_embd.weight"] == "Q5_0"
    # an explicit --token-embedding-type gets no fallback: llama-quantize cannot write it
    with pytest.raises(LowbitError, match="no fallback"):
        plan(str(smollm2_gguf), "Q4_K_M", context=1, token_embedding_type="q4_k")


def test_tensor_type_options_parse_as_llama_quantize_parses_them():
    assert tensor_type_option("ATTN_V=q8_0") == ("attn_v", "Q8_0")  # the pattern is lower-cased
    assert tensor_type_option(r"blk\.1\.x=F16") == (r"blk\.1\.x", "F16")
    for bad, msg in [("attn_v", "PATTERN=TYPE"), ("=q8_0", "missing tensor name"), ("attn_v=", "missing quantization"),
                     ("attn_v=q9_9", "invalid ggml type"), ("attn_v=i32", "can write weights"), ("attn_v=q8_0=1", "invalid ggml type"), ("(=q8_0", "regular")]:
        with pytest.raises(LowbitError, match=msg):
            Recipe.of([bad])
    with pytest.raises(LowbitError, match="invalid ggml type"):
        Recipe.of(output_tensor_type="q3")
    r = Recipe.of({"attn_v": "q8_0", "ffn": "q4_k"}, pure=True, imatrix=True)
    assert r.args() == ["--pure", "--imatrix", "FILE", "--tensor-type", "attn_v=q8_0", "--tensor-type", "ffn=q4_k"]
    with pytest.raises(LowbitError, match="either as a Recipe"):
        plan("qwen3.5-0.8b", "Q4_K_M", recipe=r, output_tensor_type="q8_0")


def test_plan_cli_takes_the_recipe(smollm2_gguf, capsys):
    assert main(["plan", str(smollm2_gguf), "--weights", "IQ3_XXS", "--no-imatrix", "--context", "1",
                 "--tensor-type", "ffn_down=q5_k", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["recipe"]["imatrix"] is False and doc["recipe"]["tensor_types"] == ["ffn_down=Q5_K"]
    assert {t["type"] for t in doc["tensors"] if "ffn_down" in t["name"]} == {"Q5_K"}
    assert "--tensor-type ffn_down=q5_k" in doc["recipe"]["llama_quantize"]
    assert main(["plan", str(smollm2_gguf), "--weights", "IQ2_XXS", "--no-imatrix"]) == 2
    assert "without an importance matrix" in capsys.readouterr().err
    assert main(["plan", "qwen3.5-0.8b", "--tensor-type", "a[=q8_0"]) == 2
    assert capsys.readouterr().err.startswith("lowbit: error: --tensor-type")
    assert main(["plan", "qwen3.5-0.8b", "--imatrix", "--no-imatrix"]) == 2


# --- against llama-quantize itself, where it is built --------------------------------------------------


def _llama_quantize() -> Path | None:
    found = os.environ.get("LLAMA_CPP_BIN")
    path = Path(found) / "llama-quantize" if found else (Path(shutil.which("llama-quantize") or "/nonexistent"))
    return path if path.is_file() else None


@pytest.mark.parametrize("mix,options", [
    ("Q4_K_M", [r"--tensor-type", r"blk\.0\.attn_v=q8_0", "--tensor-type", r"blk\.(2|5)\.ffn_down=q2_k"]),
    ("Q3_K_M", ["--output-tensor-type", "q4_k"]),
    ("IQ3_XXS", []),
])
def test_dry_run_of_llama_quantize_agrees(smollm2_gguf, gemma3_gguf, mix, options):
    """llama-quantize --dry-run (set LLAMA_CPP_BIN to its folder) decides the same type for every tensor."""
    binary = _llama_quantize()
    if binary is None:
        pytest.skip("llama-quantize not built (set LLAMA_CPP_BIN to the folder holding it)")
    line = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*?\], type =\s+(\S+), size =.*?(?:\((\S+)\))?\s*$")
    for gguf in (smollm2_gguf, gemma3_gguf):
        out = subprocess.run([str(binary), "--dry-run", "--allow-requantize", *options, str(gguf), mix],
                             capture_output=True, text=True, check=True)
        theirs = {m.group(1): (m.group(3) or m.group(2)).upper()
                  for m in map(line.match, (out.stdout + out.stderr).splitlines()) if m}
        pairs = [options[i + 1] for i in range(0, len(options), 2) if options[i] == "--tensor-type"]
        out_type = options[options.index("--output-tensor-type") + 1] if "--output-tensor-type" in options else None
        p = plan(str(gguf), mix, context=1, imatrix=False, tensor_types=pairs, output_tensor_type=out_type)
        assert _types(p) == theirs
