"""Split GGUF models (llama.cpp's gguf-split format): `NAME-00001-of-00003.gguf` and its siblings.

Each file is a GGUF of its own. The first (`split.no` = 0) holds all the model's metadata; every file
holds `split.no`, `split.count` and `split.tensors.count` (the model's tensor count), and its share
of the tensors. Files are named `PREFIX-%05d-of-%05d.gguf`, numbered from 1 (llama_split_path).
lowbit reads every file's header, checks them as llama.cpp's loader does (numbering, count, no
tensor twice, the total) and joins them into one header: the first file's metadata, every tensor,
and the header bytes and file sizes of all files added up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from lowbit.errors import LowbitError
from lowbit.models.gguf_header import GGUFHeader

_SPLIT = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SPLITS = 9999


def split_name(name: str) -> tuple[str, int, int] | None:
    """(prefix, 1-based number, count) of a split file's name or address, or None for a single file."""
    m = _SPLIT.match(name)
    if not m:
        return None
    no, count = int(m.group("no")), int(m.group("count"))
    if not 1 <= no <= count or count > MAX_SPLITS:
        raise LowbitError(f"{name}: file {no} of {count} is not a valid split name")
    return m.group("prefix"), no, count


def split_names(name: str) -> list[str]:
    """Every file of the split model `name` belongs to, in order (llama.cpp's llama_split_path)."""
    prefix, _, count = split_name(name) or (None, 0, 0)
    if prefix is None:
        return [name]
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _u(meta: dict, key: str, name: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LowbitError(f"{name} has no valid {key} (got {value!r}): not a gguf-split file")
    return value


def join(headers: list[GGUFHeader], names: list[str]) -> GGUFHeader:
    """One header for a split model; its files' `headers` in order."""
    count = len(headers)
    seen: set[str] = set()
    tensors = []
    for i, (h, name) in enumerate(zip(headers, names)):
        if _u(h.metadata, "split.no", name) != i:
            raise LowbitError(f"{name} says it is split file {h.metadata.get('split.no')}, expected {i} "
                              f"(llama.cpp numbers them from 0)")
        if _u(h.metadata, "split.count", name) != count:
            raise LowbitError(f"{name} says the model has {h.metadata.get('split.count')} files; its name says {count}")
        for t in h.tensors:
            if t.name in seen:
                raise LowbitError(f"tensor {t.name!r} is in more than one file of the split model ({name})")
            seen.add(t.name)
            tensors.append(t)
    expected = _u(headers[0].metadata, "split.tensors.count", names[0])
    if expected != len(tensors):
        raise LowbitError(f"the split model declares {expected} tensors; its {count} files hold {len(tensors)}")
    first = headers[0]
    return replace(first, tensors=tensors, data_offset=sum(h.data_offset for h in headers),
                   file_size=sum(h.file_size for h in headers))


def read_split(name: str, read: Callable[[str], GGUFHeader]) -> tuple[GGUFHeader, list[str]]:
    """Read every file of the split model `name` (any of its files) with `read`, and join them."""
    names = split_names(name)
    headers = [read(n) for n in names]
    if len(names) == 1:
        count = headers[0].metadata.get("split.count")
        if isinstance(count, int) and count > 1:
            raise LowbitError(f"{name} is file 1 of {count} of a split model, but its name does not say so "
                              f"(llama.cpp names them PREFIX-00001-of-{count:05d}.gguf)")
        return headers[0], names
    return join(headers, names), names
