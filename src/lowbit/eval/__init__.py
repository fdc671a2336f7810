"""Quality measurement on real models: GGUF loading (lm), eval text (text), PPL/KLD/top-1 (metrics), NIAH (niah).

Importing this package before torch makes idle OpenMP threads sleep instead of spin
(OMP_WAIT_POLICY=PASSIVE, unless already set): on a shared 2-core machine with several torch
processes, spinning threads made a 64-token forward pass 30x slower (14 s against 0.5 s, measured).
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
