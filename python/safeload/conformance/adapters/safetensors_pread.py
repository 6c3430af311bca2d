"""Upstream safetensors' ``pread`` backend (0.8 and 0.9; transformers uses it on Apple MPS):
``load_file(..., backend="pread")`` and ``safe_open(..., backend="pread")``."""
from __future__ import annotations

import inspect

from safeload.conformance.adapters import AdapterUnavailable, require

_st = require("safetensors", "safetensors")
_st_torch = require("safetensors.torch", "safetensors")
#: Upstream's prefetch (0.9) loads to CUDA devices only.
SURFACE_DEVICES = {"prefetch": ("cuda",)}
if "backend" not in inspect.signature(_st_torch.load_file).parameters:
    raise AdapterUnavailable(f"safetensors {_st.__version__} has no backend= option (0.8 adds it); "
                             "pip install safetensors>=0.8")


def load_file(path, device="cpu"):
    return _st_torch.load_file(path, device=device, backend="pread")


def safe_open(path, framework, device="cpu"):
    return _st.safe_open(path, framework, device=device, backend="pread")
