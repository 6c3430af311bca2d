"""Upstream safetensors' torch loader, as users call it."""
from __future__ import annotations

from safeload.conformance.adapters import require

_st_torch = require("safetensors.torch", "safetensors")


def load_file(path, device="cpu"):
    return _st_torch.load_file(path, device=device)
