"""Upstream safetensors 0.9's ``pread`` backend: ``load_file(..., backend="pread")``."""
from __future__ import annotations

import inspect

from safeload.conformance.adapters import AdapterUnavailable, require

_st_torch = require("safetensors.torch", "safetensors")
if "backend" not in inspect.signature(_st_torch.load_file).parameters:
    raise AdapterUnavailable("this safetensors has no backend= option (0.9 adds it); "
                             "pip install --pre safetensors==0.9.0rc1")


def load_file(path, device="cpu"):
    return _st_torch.load_file(path, device=device, backend="pread")
