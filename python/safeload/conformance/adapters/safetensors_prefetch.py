"""Upstream safetensors 0.9's prefetch path: ``safe_open(...).prefetch()``,
every tensor taken in file order. Upstream's prefetch loads to CUDA devices
only, so without one the adapter reports itself unavailable."""
from __future__ import annotations

from safeload.conformance.adapters import AdapterUnavailable, require

_st = require("safetensors", "safetensors")
if not hasattr(_st.safe_open, "prefetch"):
    raise AdapterUnavailable("this safetensors has no safe_open.prefetch (0.9 adds it); "
                             "pip install --pre safetensors==0.9.0rc1")
_torch = require("torch", "torch")
if not _torch.cuda.is_available():
    raise AdapterUnavailable("safetensors' prefetch loads to CUDA devices only, and no CUDA device is present")


def load_file(path, device="cuda"):
    out = {}
    with _st.safe_open(path, framework="pt", device=device) as f:
        with f.prefetch() as loader:
            for name in loader.names():
                out[name] = loader.take(name)
    return out
