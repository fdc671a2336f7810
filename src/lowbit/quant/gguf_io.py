"""Write a GGUF file with gguf's own writer: the source's metadata and tokenizer kept, tensors replaced.

The file appears atomically (lowbit.safe_write): it is written to a temporary file beside the target and
takes its name only after the last byte is on disk, so a failure (bad input, a full disk, Ctrl-C) leaves
nothing behind, and an existing file is replaced only with `overwrite` (--force).
Tensor data is produced one tensor at a time (a callback), so memory stays near one tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import gguf

from lowbit.errors import LowbitError
from lowbit.formats.weights import weight_type
from lowbit.models.gguf_header import read_header
from lowbit.progress import progress_bar
from lowbit.safe_write import atomic_path, output_path

FILE_TYPE_KEY = gguf.Keys.General.FILE_TYPE


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the output file: name, ggml shape (ne0 first) and type."""

    name: str
    shape: tuple[int, ...]
    type: str

    @property
    def nbytes(self) -> int:
        return weight_type(self.type).tensor_bytes(self.shape)

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """numpy shape of the stored array: rows (outer dims reversed) x bytes per row."""
        wt = weight_type(self.type)
        outer = tuple(reversed(self.shape[1:]))
        if wt.quantized:
            return (*outer, wt.row_bytes(self.shape[0]))
        return (*outer, self.shape[0])


class _Reader(gguf.GGUFReader):
    """gguf's reader, reporting how far into the header it has read.

    Its metadata parse is pure Python per array element: ~10-20 s for Gemma 3's 262k-token vocabulary
    on a laptop, so it gets a bar; the offset of each string read is the progress.
    """

    def __init__(self, path, on_offset: Callable[[int], None]):
        self._on_offset, self._strings = on_offset, 0
        super().__init__(path)

    def _get_str(self, offset: int):
        self._strings += 1
        if self._strings % 4096 == 0:  # a bar update per string would double the time
            self._on_offset(offset)
        return super()._get_str(offset)


def reader(path: str | os.PathLike, progress: bool = True) -> gguf.GGUFReader:
    """gguf's GGUFReader of the file (metadata parsed, tensor data memory-mapped), with a bar on a terminal."""
    try:
        size = read_header(path).data_offset  # the bounded reader: the header's length in well under a second
    except LowbitError:
        size = None
    try:
        if size is None:  # not a GGUF lowbit can read; gguf's reader says why below
            return gguf.GGUFReader(path)
        bar, task = progress_bar(progress, f"reading {Path(path).name}", -(-size // 1024), unit="KiB of metadata")
        with bar:
            return _Reader(path, lambda offset: bar.update(task, completed=offset // 1024))
    except Exception as e:  # truncated or not a GGUF: one line
        raise LowbitError(f"cannot read GGUF file {path}: {e}") from None


def _numpy_dtype(type_name: str):
    return {"F32": np.float32, "F16": np.float16}.get(type_name, np.uint8)


def write(
    out: str | os.PathLike,
    source: gguf.GGUFReader,
    specs: Iterable[TensorSpec],
    produce: Callable[[TensorSpec], np.ndarray],
    metadata: dict[str, tuple[object, gguf.GGUFValueType]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out`: every metadata field of `source` (with `metadata` overrides), then `specs` in order,
    each tensor's bytes from `produce(spec)` (checked against the spec's size)."""
    specs = list(specs)
    metadata = dict(metadata or {})
    arch = source.fields[gguf.Keys.General.ARCHITECTURE].contents()
    with atomic_path(out, force=overwrite, need_bytes=sum(s.nbytes for s in specs)) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        for field in source.fields.values():
            # GGUF.* are the reader's virtual fields; the writer adds the architecture itself.
            if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            if field.name in metadata:
                value, vtype = metadata.pop(field.name)
                sub = None
            else:
                value = field.contents()
            w.add_key_value(field.name, value, vtype, sub_type=sub)
        for key, (value, vtype) in metadata.items():
            w.add_key_value(key, value, vtype)
        for s in specs:
            dt = np.dtype(_numpy_dtype(s.type))
            w.add_tensor_info(s.name, s.byte_shape, dt, s.nbytes, gguf.GGMLQuantizationType[s.type])
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for s in specs:
                data = np.ascontiguousarray(produce(s))
                if data.nbytes != s.nbytes:
                    raise LowbitError(f"{s.name}: produced {data.nbytes} bytes, {s.type} of {s.shape} needs {s.nbytes}")
                w.write_tensor_data(data)
        finally:
            w.close()
    return output_path(out)
