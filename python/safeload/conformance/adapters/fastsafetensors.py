"""fastsafetensors, without GPUDirect Storage (works on CPU-only hosts).

Since 0.5 its tensors keep their backing buffer alive after the file is
closed, so they are returned as the peer hands them out.
"""
from __future__ import annotations

from safeload.conformance.adapters import require

_fst = require("fastsafetensors", "fastsafetensors")


def load_file(path, device="cpu"):
    out = {}
    with _fst.fastsafe_open(filenames=[str(path)], nogds=True, device=str(device)) as f:
        for name in f.keys():
            out[name] = f.get_tensor(name)
    return out
