"""fastsafetensors, without GPUDirect Storage (works on CPU-only hosts).

Its tensors are DLPack views into the loader's own buffers, which are freed
when the file is closed, so each is cloned before the context manager exits.
"""
from __future__ import annotations

from safeload.conformance.adapters import require

_fst = require("fastsafetensors", "fastsafetensors")


def load_file(path, device="cpu"):
    out = {}
    with _fst.fastsafe_open(filenames=[str(path)], nogds=True, device=str(device)) as f:
        for name in f.get_keys():
            out[name] = f.get_tensor(name).clone()
    return out
