"""Resolve MODEL arguments: a built-in name, a config.json (or its folder), or a .gguf file."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlparse

from lowbit.errors import LowbitError
from lowbit.models import remote
from lowbit.models.config import ModelConfig, from_gguf_metadata, from_hf_config, load_config_file
from lowbit.models.gguf_header import GGUFHeader, read_header
from lowbit.models.split import read_split
from lowbit.progress import notice

QWEN35_FAMILY = [
    "qwen3.5-0.8b", "qwen3.5-2b", "qwen3.5-4b", "qwen3.5-9b",
    "qwen3.5-27b", "qwen3.5-35b-a3b", "qwen3.5-122b-a10b", "qwen3.5-397b-a17b",
]


@dataclass(frozen=True)
class ResolvedModel:
    config: ModelConfig
    gguf: GGUFHeader | None = None  # set when the model came from a .gguf file
    hf_id: str = ""
    path: Path | None = None  # the folder a config.json came from (its checkpoint and tokenizer files, if any)
    origin: dict = field(default_factory=dict)  # a GGUF's files (and for a remote one, the bytes fetched)


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


def _from_header(header: GGUFHeader, name: str, origin: dict) -> ResolvedModel:
    meta = dict(header.metadata)
    # llama.cpp decides tied embeddings by the absence of output.weight; so do we.
    meta["lowbit.has_output_tensor"] = any(t.name == "output.weight" for t in header.tensors)
    return ResolvedModel(from_gguf_metadata(meta, name=name), gguf=header, origin=origin)


def _read_local(name: str) -> GGUFHeader:
    if not Path(name).is_file():
        raise LowbitError(f"no such GGUF file: {name}")
    return read_header(name)


@lru_cache(maxsize=32)  # simulate and fit plan one model many times: its header is fetched once
def _remote(source: str, endpoint: str) -> ResolvedModel:
    url = remote.url_of(source)
    deadline = time.monotonic() + remote.TIME_LIMIT_S
    fetched: dict[str, remote.Fetched] = {}

    first: list[GGUFHeader] = []

    def read(u: str) -> GGUFHeader:
        # a split model's later files hold only split keys and their share of the tensor infos
        guess = None
        if first:
            count, files = first[0].metadata.get("split.tensors.count"), first[0].metadata.get("split.count")
            if isinstance(count, int) and isinstance(files, int) and files > 0:
                guess = min(remote.FIRST_RANGE, 4096 + 256 * (-(-count // files)))
        header, fetched[u] = remote.read_remote_header(u, deadline, first_range=guess)
        first.append(header)
        return header

    header, names = read_split(url, read)
    files = [{"name": u, "bytes": fetched[u].file_size, "header_bytes": fetched[u].header_bytes,
              "fetched_bytes": fetched[u].fetched_bytes, "requests": fetched[u].requests} for u in names]
    total = sum(f["fetched_bytes"] for f in files)
    notice(f"read the header{'s of' if len(files) > 1 else ' of'} {source}"
           f"{f' ({len(files)} files)' if len(files) > 1 else ''}: fetched {total:,} bytes in "
           f"{sum(f['requests'] for f in files)} range requests, of {header.file_size:,}")
    return _from_header(header, Path(unquote(urlparse(names[0]).path)).name,
                        {"location": source, "url": url, "files": files, "fetched_bytes": total})


def resolve(model: str) -> ResolvedModel:
    if remote.is_remote(model):
        return _remote(model.strip(), os.environ.get("HF_ENDPOINT", ""))
    key = canonical(model)
    if key in builtin_names():
        return _builtin(key)
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LowbitError(f"no such GGUF file: {model}")
        header, names = read_split(str(path), _read_local)
        files = [{"name": n, "bytes": Path(n).stat().st_size} for n in names]
        return _from_header(header, Path(names[0]).name, {"location": str(path), "files": files})
    if path.name == "config.json" or path.suffix.lower() == ".json" or path.is_dir():
        if not path.exists():
            raise LowbitError(f"no such file or folder: {model}")
        return ResolvedModel(load_config_file(path), path=path if path.is_dir() else path.parent)
    raise LowbitError(
        f"unknown model {model!r}: not a built-in ({', '.join(builtin_names())}), a config.json, a .gguf file, "
        f"or a https:// or hf://OWNER/REPO/FILE.gguf address"
    )
