"""A bounded GGUF header reader: metadata and tensor infos, never the tensor data.

gguf's GGUFReader maps the whole file and trusts its counts; a hostile or truncated header can make
it allocate without bound. This reader walks the header under budgets that bound the *work*, not only
the file: counts, key, name and string lengths, nesting, bytes read, the total number of items walked,
the items kept as Python objects and the text decoded, so its time and memory stay small and
proportional to what a real model holds, whatever the file declares. Anything malformed or over a
budget is one LowbitError line (names in it cut short). Type codes and sizes come from the gguf package.
"""

from __future__ import annotations

import mmap
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from lowbit.formats.ggml import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from lowbit.errors import LowbitError
from lowbit.safe_read import input_path, open_regular, require_file, short

MAX_KV = 1 << 16  # metadata keys (a real model has a few dozen)
MAX_TENSORS = 1 << 17  # tensor infos (the largest GGUFs hold about a thousand)
MAX_KEY = 4096  # bytes in a metadata key ("qwen35moe.attention.head_count_kv" is 33)
MAX_NAME = 256  # bytes in a tensor name (llama.cpp refuses 64 or more: GGML_MAX_NAME)
MAX_STRING = 1 << 24  # bytes in one string value (a chat template is a few KB)
MAX_ARRAY = 1 << 24  # items in one array (vocabularies are ~10^5..10^6)
MAX_ITEMS = 1 << 21  # array items walked one by one, in all (a vocabulary and its merges: at most ~6 x 10^5)
MAX_KEPT_ITEMS = 1 << 16  # array items kept as Python objects, in all; later arrays are kept as their length
MAX_TEXT = 1 << 26  # bytes of text decoded (keys, names, string values), in all
MAX_HEADER_BYTES = 1 << 30
MAX_DIMS = 4
KEPT_ARRAY = 4096  # arrays longer than this are summarized by their length (tokenizer vocab, merges)

_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order
    type_name: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int  # bytes before the first tensor: the header, exact
    file_size: int

    @property
    def tensor_bytes(self) -> int:
        """Data section size: every tensor padded to the alignment."""
        return sum(_pad(t.nbytes, self.alignment) for t in self.tensors)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


class Truncated(LowbitError):
    """The bytes end before the header does; `wanted` is how many bytes from the start it needs at least."""

    def __init__(self, message: str, wanted: int):
        super().__init__(message)
        self.wanted = wanted


class _Cursor:
    """Reads the header from a memory map: nothing is copied that is only skipped; every budget is counted here."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, min(size, MAX_HEADER_BYTES), 0
        self.items = 0  # array items walked
        self.kept = 0  # array items kept as objects
        self.text = 0  # bytes decoded

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise Truncated(f"GGUF header is truncated or malformed (wants {n} bytes at offset {self.pos})",
                            self.pos + max(n, 0))

    def read(self, n: int) -> bytes:
        self._need(n)
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        """Step over n bytes without reading them (their pages are never touched)."""
        self._need(n)
        self.pos += n

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self._need(n)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self, limit: int = MAX_STRING, what: str = "string") -> str:
        n = self.unpack("<Q")
        if n > limit:
            raise LowbitError(f"GGUF {what} of {n:,} bytes at offset {self.pos} is implausible (limit {limit:,})")
        self.text += n
        if self.text > MAX_TEXT:
            raise LowbitError(f"GGUF header holds more than {MAX_TEXT:,} bytes of text: implausible")
        return self.read(n).decode("utf-8", errors="replace")

    def _walk(self, n: int) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise LowbitError(f"GGUF header holds more than {MAX_ITEMS:,} array items: implausible")

    def skip_strings(self, count: int) -> None:
        """Walk `count` strings without decoding them (a vocabulary, merges)."""
        self._walk(count)
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self._need(8)  # raises: truncated
            n = unpack(buf, pos)[0]
            if n > MAX_STRING:
                raise LowbitError(f"GGUF string of {n:,} bytes at offset {pos + 8} is implausible")
            if pos + 8 + n > size:
                self.pos = pos + 8
                self._need(n)  # raises: truncated
            pos += 8 + n
        self.pos = pos

    def value(self, vtype: int, depth: int = 0) -> Any:
        try:
            vt = GGUFValueType(vtype)
        except ValueError:
            raise LowbitError(f"GGUF value type {vtype} is unknown") from None
        if vt in _SCALARS:
            return self.unpack(_SCALARS[vt])
        if vt == GGUFValueType.STRING:
            return self.string()
        if depth > 2:
            raise LowbitError("GGUF arrays nest too deeply")
        item_type = self.unpack("<I")
        n = self.unpack("<Q")
        if n > MAX_ARRAY:
            raise LowbitError(f"GGUF array of {n:,} items is implausible")
        # long arrays, and any array once the kept-items budget is spent, are summarized by their length
        if n > KEPT_ARRAY or self.kept + n > MAX_KEPT_ITEMS:
            if item_type in _SCALAR_IDS:  # skipped in O(1), whatever its length
                self.skip(n * struct.calcsize(_SCALARS[GGUFValueType(item_type)]))
                return _Summary(n)
            if item_type == GGUFValueType.STRING:
                self.skip_strings(n)
                return _Summary(n)
            if self.kept + n > MAX_KEPT_ITEMS:
                raise LowbitError(f"GGUF header holds more than {MAX_KEPT_ITEMS:,} nested array items: implausible")
        self._walk(n)
        self.kept += n
        return [self.value(item_type, depth + 1) for _ in range(n)]


class _Summary(int):
    """A long array kept only as its length."""


_SCALAR_IDS = {int(t) for t in _SCALARS}


def read_header(path: str | Path, file_size: int | None = None) -> GGUFHeader:
    """The header of the GGUF file at `path`. `file_size`: the size of the whole file when `path` holds only
    its first bytes (a header fetched over the network); a header running past them raises `Truncated`."""
    path = require_file(input_path(path), "GGUF file")
    try:
        stat = path.stat()
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise LowbitError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return _read_header(resolved, stat.st_size, stat.st_mtime_ns, file_size)


@contextmanager
def _mapped(path: Path):
    """The GGUF file at `path` mapped, its magic, version and counts checked: (cursor after the counts, file size,
    version, tensors, metadata keys)."""
    f = open_regular(path, "GGUF file")  # never blocks on a FIFO swapped in since the stat
    size = os.fstat(f.fileno()).st_size  # the file as opened, should it have changed since the stat
    if size < 24:
        f.close()
        raise LowbitError(f"{path.name} is truncated: {size} bytes cannot hold a GGUF header")
    with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        cur = _Cursor(mm, size)
        if cur.read(4) != struct.pack("<I", GGUF_MAGIC):
            raise LowbitError(f"{path.name} is not a GGUF file (bad magic)")
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise LowbitError(f"{path.name}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise LowbitError(f"{path.name} declares {n_tensors} tensors and {n_kv} metadata keys: implausible")
        yield cur, size, version, n_tensors, n_kv


@lru_cache(maxsize=16)  # planning one file under many scenarios reads its header once
def _read_header(path: Path, size: int, mtime_ns: int, file_size: int | None = None) -> GGUFHeader:
    with _mapped(path) as (cur, size, version, n_tensors, n_kv):
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string(MAX_KEY, "metadata key")
            meta[key] = cur.value(cur.unpack("<I"))
        for key, value in list(meta.items()):
            if isinstance(value, _Summary):
                meta[key + ".count"] = int(value)
                meta[key] = f"<{int(value)} items>"
            elif isinstance(value, list):
                meta[key + ".count"] = len(value)
        infos = []
        for _ in range(n_tensors):
            name = cur.string(MAX_NAME, "tensor name")
            n_dims = cur.unpack("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise LowbitError(f"tensor {short(name)} has {n_dims} dimensions")
            shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
            type_id = cur.unpack("<I")
            offset = cur.unpack("<Q")
            try:
                qtype = GGMLQuantizationType(type_id)
                block, block_bytes = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise LowbitError(f"tensor {short(name)} has unknown ggml type {type_id}") from None
            n = 1
            for d in shape:
                if d <= 0 or d > 1 << 40:
                    raise LowbitError(f"tensor {short(name)} has an absurd dimension {d}")
                n *= d
            if n > 1 << 44 or shape[0] % block:
                raise LowbitError(f"tensor {short(name)} shape {shape} is impossible for type {qtype.name}")
            infos.append(TensorInfo(name, shape, qtype.name, offset, n // block * block_bytes))
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 16:
            raise LowbitError(f"GGUF alignment {short(alignment)} is invalid")
        data_offset = _pad(cur.pos, alignment)
    size = size if file_size is None else file_size
    header = GGUFHeader(path, version, meta, infos, alignment, data_offset, size)
    end = max((t.offset + t.nbytes for t in infos), default=0)
    if infos and data_offset + end > size:
        raise LowbitError(f"{path.name} is truncated: its tensors need {data_offset + end} bytes, the file has {size}")
    return header


def read_array(path: str | Path, key: str) -> list | None:
    """One metadata array of the GGUF file in full (e.g. "tokenizer.ggml.token_type"), None if the key is absent.

    read_header keeps long arrays only as their length; this walks the same header under the same budgets
    and keeps just the one asked for.
    """
    path = require_file(input_path(path), "GGUF file")
    with _mapped(path) as (cur, _, _, _, n_kv):
        for _ in range(n_kv):
            name = cur.string(MAX_KEY, "metadata key")
            vtype = cur.unpack("<I")
            if name != key:
                cur.value(vtype)
                continue
            if vtype != GGUFValueType.ARRAY:
                raise LowbitError(f"{path.name}: {short(key)} is not an array")
            item_type, n = cur.unpack("<I"), cur.unpack("<Q")
            if n > MAX_ARRAY:
                raise LowbitError(f"GGUF array of {n:,} items is implausible")
            cur._walk(n)
            if item_type in _SCALAR_IDS:
                fmt = _SCALARS[GGUFValueType(item_type)]
                width = struct.calcsize(fmt)
                data = cur.read(n * width)
                return list(struct.unpack(f"<{n}{fmt[1:]}", data))
            if item_type == GGUFValueType.STRING:
                return [cur.string() for _ in range(n)]
            raise LowbitError(f"{path.name}: {short(key)} is an array of arrays")
    return None
