"""Compatibility shim for Triton's CPU interpreter (TRITON_INTERPRET=1, used by CI's kernel tests).

Triton 3.6's interpreter keeps scalars as 1-element arrays and converts them with int(array), which
NumPy >= 2.3 refuses ("only 0-dimensional arrays can be converted"); any loop with a run-time bound
then fails. We re-patch tensor.__index__ to read the one element. No effect on compiled kernels.
"""

from __future__ import annotations

import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def apply() -> None:
    if not INTERPRET:
        return
    import numpy as np
    from triton.runtime import interpreter as itp

    orig = itp._patch_lang_tensor
    if getattr(orig, "_lowbit", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._lowbit = True
    itp._patch_lang_tensor = patched
