"""A local safetensors checkpoint: exact dtypes, shapes and bytes from its index and headers only.

A safetensors file starts with an 8-byte little-endian header length and a JSON header mapping each
tensor to {dtype, shape, data_offsets}; `model.safetensors.index.json` maps tensor names to shard
files. Nothing past the headers is read. Limits guard hostile files: the header size (100 MB, as
the safetensors format itself caps it), the tensor count, the number of shards, and every offset is
checked against the file size.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.safe_read import input_path, is_dir, is_file, open_regular, read_bounded, short

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
MAX_TENSORS = 1 << 20
MAX_SHARDS = 10_000
MAX_INDEX_BYTES = 64 << 20  # an index lists one line per tensor: a few MB for the largest models
# Bits per value of each safetensors dtype (safetensors/src/tensor.rs Dtype).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "E8M0": 8, "F4": 4, "F6_E2M3": 6,
    "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64,
    "I64": 64, "U64": 64,
}


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]  # as stored (row-major, outermost first)
    nbytes: int
    file: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    tensors: list[StoredTensor]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    def dtypes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.dtype] = out.get(t.dtype, 0) + t.nbytes
        return out


def read_header(path: str | Path) -> list[StoredTensor]:
    """The tensors of one .safetensors file, from its header alone."""
    path = Path(path)
    try:
        with open_regular(path, "safetensors file") as f:  # a FIFO or device is refused, never read
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) != 8:
                raise LowbitError(f"{path.name} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n + 8 > size:
                raise LowbitError(f"{path.name}: safetensors header of {n} bytes is impossible (file {size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise LowbitError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise LowbitError(f"{path.name}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict) or len(header) > MAX_TENSORS:
        raise LowbitError(f"{path.name}: safetensors header must be an object of at most {MAX_TENSORS} tensors")
    data = size - 8 - n
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise LowbitError(f"{path.name}: tensor {short(name)} has no dtype/shape/offsets")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise LowbitError(f"{path.name}: tensor {short(name)} has unknown dtype {short(dtype)}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)):
            raise LowbitError(f"{path.name}: tensor {short(name)} has an invalid shape {short(shape)}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= data):
            raise LowbitError(f"{path.name}: tensor {short(name)} has data offsets {short(offs)} outside the file")
        t = StoredTensor(name, dtype, tuple(shape), offs[1] - offs[0], path.name)
        if t.nbytes * 8 != -(-t.numel * DTYPE_BITS[dtype] // 8) * 8:
            raise LowbitError(f"{path.name}: tensor {short(name)} holds {t.nbytes} bytes, its {dtype} shape {shape} "
                              f"needs {-(-t.numel * DTYPE_BITS[dtype] // 8)}")
        out.append(t)
    return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder (index + shards, or one model.safetensors) or a single .safetensors file."""
    path = input_path(path)
    if is_file(path):
        return Checkpoint(path.parent, read_header(path))
    if not is_dir(path):
        raise LowbitError(f"no such checkpoint: {short(str(path))}")
    index = path / "model.safetensors.index.json"
    if is_file(index):
        raw = read_bounded(index, MAX_INDEX_BYTES, "safetensors index")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            raise LowbitError(f"{index} is not a valid safetensors index") from None
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            raise LowbitError(f"{index} has no weight_map")
        if not all(isinstance(s, str) for s in weight_map.values()):
            raise LowbitError(f"{index}: every weight_map value must be a shard file name")
        shards = sorted(set(weight_map.values()))
    else:
        shards = sorted(p.name for p in path.glob("*.safetensors"))
    if not shards:
        raise LowbitError(f"{path} holds no .safetensors files")
    if len(shards) > MAX_SHARDS or any(not isinstance(s, str) or "/" in s or "\\" in s or s.startswith(".")
                                       for s in shards):
        raise LowbitError(f"{path}: the safetensors index names implausible shard files")
    tensors = []
    for shard in shards:
        tensors += read_header(path / shard)
    return Checkpoint(path, tensors)
