"""InstantTensor's safe_open. Its tensors point into an internal buffer that
is reused, so each is cloned immediately, as its documentation requires."""
from __future__ import annotations

from safeload.conformance.adapters import AdapterUnavailable, require

_it = require("instanttensor", "instanttensor")
if not require("torch", "torch").cuda.is_available():
    raise AdapterUnavailable("InstantTensor supports CUDA devices only, and no CUDA device is present")


def load_file(path, device="cpu"):
    import torch

    dev = torch.device(device)
    target = dev.index if dev.type == "cuda" and dev.index is not None else (0 if dev.type == "cuda" else device)
    out = {}
    with _it.safe_open(str(path), framework="pt", device=target) as f:
        for name, tensor in f.tensors():
            out[name] = tensor.clone()
    return out
