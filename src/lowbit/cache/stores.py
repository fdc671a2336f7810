"""Where one layer's K or V lives: packed bytes per token (`VectorStore`), or, for a family whose keys are
quantized per channel over groups of tokens (KIVI), whole groups plus an fp16 residual (`TokenGroupStore`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowbit.errors import LowbitError
from lowbit.formats.kv import KVSpec, parse_kv_spec
from lowbit.quant.kv_baselines import make_codec
from lowbit.quant.kv_codec import KVCodec


class VectorStore:
    """Per-token packed head vectors: `packed` is uint8 [batch, heads, tokens, vector_bytes], a view of a buffer
    that grows by doubling along tokens, so a decode step copies only its new vectors (not the whole cache,
    as a concatenation would). Vectors stay back to back (token stride = vector_bytes), as the CUDA decode
    kernel wants them."""

    def __init__(self, codec: KVCodec):
        self.codec = codec
        self.packed: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        self._lo = self._hi = 0  # packed = _buf[..., _lo:_hi, :]

    def __len__(self) -> int:
        return self._hi - self._lo

    def append(self, x: torch.Tensor, pack: Callable[..., torch.Tensor] | None = None) -> None:
        """Quantize and append x [batch, heads, n, head_dim]: with `pack(x, out=...)` (a kernel) straight into the
        buffer's next tokens, or with the codec's quantize and a copy."""
        if x.shape[-2] and self.codec.needs_calibration:
            # Outlier channels and channel means (per KV head) and fp8's scale come from the first tokens (the prefill).
            self.codec.calibrate(x, keep_dims=(1,))
        n = x.shape[-2]
        if pack is None or not n:
            self.extend(self.codec.quantize(x) if n else
                        torch.empty(*x.shape[:-1], self.codec.vector_bytes, dtype=torch.uint8, device=x.device))
            return
        self._room(x.shape[:-2], n, x.device)
        pack(x, out=self._buf[..., self._hi:self._hi + n, :])  # the kernel writes in place: no copy after it
        self._advance(n)

    def extend(self, p: torch.Tensor) -> None:
        """Append already packed vectors [batch, heads, n, vector_bytes]."""
        n = p.shape[-2]
        self._room(p.shape[:-2], n, p.device)
        self._buf[..., self._hi:self._hi + n, :] = p
        self._advance(n)

    def _room(self, lead: torch.Size, n: int, device) -> None:
        """A buffer with room for n more tokens (doubling; the live bytes copied once when it grows)."""
        if self._buf is None or self._hi + n > self._buf.shape[-2]:
            live = len(self)
            buf = torch.empty(*lead, max(16, 2 * live, live + n), self.codec.vector_bytes, dtype=torch.uint8,
                              device=device)
            if live:
                buf[..., :live, :] = self.packed
            self._buf, self._lo, self._hi = buf, 0, live

    def _advance(self, n: int) -> None:
        self._hi += n
        self.packed = self._buf[..., self._lo:self._hi, :]

    def reserve(self, tokens: int) -> None:
        """Room for `tokens` vectors in all (after the first append, which fixes batch and heads): appends up to that
        many copy nothing, where doubling would copy the live bytes and briefly hold three times them."""
        if self._buf is None:
            raise LowbitError("reserve() needs one append first (it fixes the batch and head dimensions)")
        if self._buf.shape[-2] - self._lo >= tokens:
            return
        live = len(self)
        buf = torch.empty(*self._buf.shape[:-2], max(tokens, live), self._buf.shape[-1], dtype=torch.uint8,
                          device=self._buf.device)
        if live:
            buf[..., :live, :] = self.packed
        self._buf, self._lo, self._hi = buf, 0, live
        self.packed = self._buf[..., :live, :]

    def dense(self) -> torch.Tensor:
        if len(self) == 0:
            return torch.zeros(*self.packed.shape[:-1], self.codec.head_dim, device=self.packed.device)
        return self.codec.dequantize(self.packed)

    def keep_last(self, n: int) -> None:
        if len(self) > n:
            self._lo = self._hi - n
            self.packed = self._buf[..., self._lo:self._hi, :]

    def index_batch(self, fn) -> None:
        if self.packed is not None:
            self._buf = fn(self.packed).contiguous()
            self._lo, self._hi = 0, self._buf.shape[-2]
            self.packed = self._buf

    def nbytes(self) -> int:
        return 0 if self.packed is None else self.packed.numel()


class TokenGroupStore:
    """Keys quantized per channel over groups of `codec.token_group` tokens (KIVI: 32): complete groups packed,
    the rest kept in fp16 until their group is complete, as KIVI's residual does."""

    def __init__(self, codec: KVCodec):
        self.codec = codec
        self.group = codec.token_group
        self.groups: torch.Tensor | None = None  # uint8 [B, H, G, group_bytes]
        self.residual: torch.Tensor | None = None  # fp16 [B, H, r < group, D]

    def __len__(self) -> int:
        g = 0 if self.groups is None else self.groups.shape[-2] * self.group
        return g + (0 if self.residual is None else self.residual.shape[-2])

    def append(self, x: torch.Tensor, pack=None) -> None:
        r = x.to(torch.float16) if self.residual is None else torch.cat([self.residual, x.to(torch.float16)], -2)
        full = r.shape[-2] // self.group * self.group
        if full:
            g = r[..., :full, :].float()
            g = g.reshape(*g.shape[:-2], full // self.group, self.group, g.shape[-1])
            # fp16 staging is what the residual holds; quantizing from it matches a real cache.
            p = self.codec.quantize_group(g)
            self.groups = p if self.groups is None else torch.cat([self.groups, p], -2)
        self.residual = r[..., full:, :]

    def dense(self) -> torch.Tensor:
        parts = []
        if self.groups is not None:
            x = self.codec.dequantize_group(self.groups)  # [B, H, G, group, D]
            parts.append(x.reshape(*x.shape[:-3], -1, x.shape[-1]))
        if self.residual is not None:
            parts.append(self.residual.float())
        return torch.cat(parts, -2)

    def keep_last(self, n: int) -> None:
        while self.groups is not None and self.groups.shape[-2] and len(self) - self.group >= n:
            self.groups = self.groups[..., 1:, :]

    def index_batch(self, fn) -> None:
        self.groups = None if self.groups is None else fn(self.groups)
        self.residual = None if self.residual is None else fn(self.residual)

    def nbytes(self) -> int:
        return sum(0 if t is None else t.numel() * t.element_size() for t in (self.groups, self.residual))


def make_store(spec: KVSpec | str, head_dim: int, *, keys: bool, seed: int = 0, device="cpu"):
    """The store for K (keys=True) or V of one layer in this format."""
    spec = parse_kv_spec(spec)
    spec.check_head_dim(head_dim)
    if keys and spec.fmt.key_token_group:
        return TokenGroupStore(make_codec(spec, head_dim, seed=seed, device=device, keys=True))
    return VectorStore(make_codec(spec, head_dim, seed=seed, device=device, keys=keys))
