"""gguf's type tables (GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType, GGUFValueType, GGUF_MAGIC).

`import gguf` pulls numpy and gguf's reader and writer (~80 ms); the simulator needs only the tables
in `gguf/constants.py`, which imports nothing heavy. We load that one file under its real module name,
so a later `import gguf` reuses it and every enum stays the same object.
"""

from __future__ import annotations

import importlib.util
import sys


def _constants():
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the gguf package is required (pip install gguf)")
    path = f"{spec.submodule_search_locations[0]}/constants.py"
    const_spec = importlib.util.spec_from_file_location("gguf.constants", path)
    module = importlib.util.module_from_spec(const_spec)
    sys.modules["gguf.constants"] = module
    const_spec.loader.exec_module(module)
    return module


_c = _constants()
GGML_QUANT_SIZES = _c.GGML_QUANT_SIZES
GGMLQuantizationType = _c.GGMLQuantizationType
LlamaFileType = _c.LlamaFileType
GGUFValueType = _c.GGUFValueType
GGUF_MAGIC = _c.GGUF_MAGIC
GGUF_DEFAULT_ALIGNMENT = _c.GGUF_DEFAULT_ALIGNMENT
