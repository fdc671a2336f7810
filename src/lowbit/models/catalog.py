"""Resolve MODEL arguments: a built-in name, a config.json (or its folder), or a .gguf file."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.models.config import ModelConfig, from_gguf_metadata, from_hf_config, load_config_file
from lowbit.models.gguf_header import GGUFHeader, read_header

QWEN35_FAMILY = [
    "qwen3.5-0.8b", "qwen3.5-2b", "qwen3.5-4b", "qwen3.5-9b",
    "qwen3.5-27b", "qwen3.5-35b-a3b", "qwen3.5-122b-a10b", "qwen3.5-397b-a17b",
]


@dataclass(frozen=True)
class ResolvedModel:
    config: ModelConfig
    gguf: GGUFHeader | None = None  # set when the model came from a .gguf file
    hf_id: str = ""
    folder: Path | None = None  # the folder of a config.json (its tokenizer files size the GGUF header)


def _catalog_dir():
    return resources.files("lowbit.models").joinpath("catalog")


@lru_cache(maxsize=None)
def builtin_names() -> tuple[str, ...]:
    return tuple(sorted(p.name[:-5] for p in _catalog_dir().iterdir() if p.name.endswith(".json")))


@lru_cache(maxsize=None)
def _builtin(name: str) -> ResolvedModel:
    raw = json.loads(_catalog_dir().joinpath(f"{name}.json").read_text())
    info = raw.get("_lowbit", {})
    cfg = from_hf_config(raw, name=name)
    return ResolvedModel(replace(cfg, source=info.get("source", "built-in"), extras=info.get("extras", {})),
                         hf_id=info.get("hf_id", ""))


def canonical(name: str) -> str:
    """'Qwen/Qwen3.5-122B-A10B' -> 'qwen3.5-122b-a10b'."""
    return name.strip().split("/")[-1].lower()


def resolve(model: str) -> ResolvedModel:
    key = canonical(model)
    if key in builtin_names():
        return _builtin(key)
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LowbitError(f"no such GGUF file: {model}")
        header = read_header(path)
        meta = dict(header.metadata)
        # llama.cpp decides tied embeddings by the absence of output.weight; so do we.
        meta["lowbit.has_output_tensor"] = any(t.name == "output.weight" for t in header.tensors)
        return ResolvedModel(from_gguf_metadata(meta, name=path.name), gguf=header)
    if path.name == "config.json" or path.suffix.lower() == ".json" or path.is_dir():
        if not path.exists():
            raise LowbitError(f"no such file or folder: {model}")
        return ResolvedModel(load_config_file(path), folder=path if path.is_dir() else path.parent)
    raise LowbitError(
        f"unknown model {model!r}: not a built-in ({', '.join(builtin_names())}), a config.json, or a .gguf file"
    )
