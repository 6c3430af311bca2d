"""Upstream safetensors as users call it, through every surface it has: ``load_file`` and
``safe_open`` (its default backend, which maps the file), and ``load(bytes)`` (upstream's
``load`` has no device: its CPU tensors are moved with ``.to(device)``, as a caller would)."""
from __future__ import annotations

from safeload.conformance.adapters import require

_st = require("safetensors", "safetensors")
_st_torch = require("safetensors.torch", "safetensors")
#: Upstream's prefetch (0.9) loads to CUDA devices only.
SURFACE_DEVICES = {"prefetch": ("cuda",)}


def load_file(path, device="cpu"):
    return _st_torch.load_file(path, device=device)


def load(data, device="cpu"):
    tensors = _st_torch.load(bytes(data))
    return tensors if device == "cpu" else {k: v.to(device) for k, v in tensors.items()}


def safe_open(path, framework, device="cpu"):
    return _st.safe_open(path, framework, device=device)
