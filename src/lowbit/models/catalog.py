"""The one registry of model names, and MODEL arguments resolved: a name, a config.json (or its folder), a .gguf.

Names are of two kinds, and every command takes both:
  built-in configs (models/catalog/*.json: the Qwen3.5 family, Llama 3.1 8B): shapes only, for the simulator;
  local real models (models/local.py: smollm2-135m, gemma3-270m): GGUF files from PyPI, planned as stored
  and run by eval/quantize/inspect.
`models()` lists them all, with what each is for and whether it is installed.
"""

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
from lowbit.models.local import LOCAL, installed, local_model, model_path, where
from lowbit.safe_read import input_path, is_dir, probe, require_file, short
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
    path = input_path(name)
    if probe(path) is None:  # a split model's part: its file name is what the user must find
        raise LowbitError(f"no such GGUF file: {short(path.name)} (in {short(str(path.parent))})")
    return read_header(require_file(path, "GGUF file"))


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
    """A MODEL argument as a config (and its GGUF header, for a file): a built-in name, a local real model's
    name, a .gguf path (split files read together), a https:// or hf:// address of one (header only), or a
    config.json (or its folder)."""
    if remote.is_remote(model):
        return _remote(model.strip(), os.environ.get("HF_ENDPOINT", ""))
    key = canonical(model)
    if key in builtin_names():
        return _builtin(key)
    if local_model(model) is not None:  # a real GGUF: planned as stored, like any .gguf
        path = model_path(model)
        return _from_header(read_header(path), local_model(model).name, {"location": str(path), "files": [
            {"name": str(path), "bytes": path.stat().st_size}]})
    path = input_path(model)
    if path.suffix.lower() == ".gguf":
        require_file(path, "GGUF file")
        header, parts = read_split(str(path), _read_local)
        files = [{"name": n, "bytes": Path(n).stat().st_size} for n in parts]
        return _from_header(header, Path(parts[0]).name, {"location": str(path), "files": files})
    if path.name == "config.json" or path.suffix.lower() == ".json" or is_dir(path):
        if probe(path) is None:
            raise LowbitError(f"no such file or folder: {short(model)}")
        return ResolvedModel(load_config_file(path), path=path if is_dir(path) else path.parent)
    raise LowbitError(f"unknown model {short(model)}: not a name from `lowbit models` ({', '.join(names())}), "
                      "a config.json, a .gguf file, or a https:// or hf://OWNER/REPO/FILE.gguf address")


def gguf_path(model: str | os.PathLike) -> Path:
    """The GGUF file behind a MODEL argument (a local real model's name or a .gguf path), for the commands
    that read tensor data: eval, quantize, inspect. A built-in config has no weights to read."""
    if isinstance(model, str) and canonical(model) in builtin_names():
        raise LowbitError(f"{canonical(model)} is a built-in config (shapes only, no weights): this command needs "
                          f"a real GGUF: {', '.join(LOCAL)} or a .gguf path (see `lowbit models`)")
    return model_path(model)


# What each kind of name is good for: the commands that take it.
CONFIG_COMMANDS = ("simulate", "plan", "fit")
GGUF_COMMANDS = ("eval kv", "eval weights", "quantize", "inspect", *CONFIG_COMMANDS)


@dataclass(frozen=True)
class ModelEntry:
    """One name of the registry, as `lowbit models` lists it."""

    name: str
    kind: str  # "config" (built-in shapes) or "gguf" (a real model file)
    about: str
    commands: tuple[str, ...]
    installed: bool
    install: str = ""  # the line that installs it, when it is not
    path: str | None = None  # the file, once on disk
    hf_id: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "about": self.about, "commands": list(self.commands),
                "installed": self.installed, "install": self.install or None, "path": self.path,
                "hf_id": self.hf_id or None}


def names() -> tuple[str, ...]:
    """Every registered name: the built-in configs, then the local real models."""
    return (*builtin_names(), *LOCAL)


def models() -> list[ModelEntry]:
    """The registry: built-in configs (always there) and local real GGUF models (installed or not)."""
    out = []
    for name in sorted(builtin_names(), key=lambda n: (n not in QWEN35_FAMILY, QWEN35_FAMILY.index(n)
                                                        if n in QWEN35_FAMILY else 0, n)):
        raw = json.loads(_catalog_dir().joinpath(f"{name}.json").read_text()).get("_lowbit", {})
        out.append(ModelEntry(name, "config", f"{raw.get('about', 'built-in config')}, config only",
                              CONFIG_COMMANDS, True, hf_id=raw.get("hf_id", "")))
    for m in LOCAL.values():
        ok = installed(m.name)
        path = where(m.name)
        out.append(ModelEntry(m.name, "gguf", f"real GGUF, {m.title}", GGUF_COMMANDS, ok,
                              "" if ok else m.install, str(path) if path else None))
    return out
