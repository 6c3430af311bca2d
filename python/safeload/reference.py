"""The reference loader: simple, single-threaded, obviously correct.

It is the oracle every other loader is tested against. Use
:func:`safeload.load_file` for speed.
"""
from __future__ import annotations

import os
from typing import Dict

import torch

from safeload import _C
from safeload._loading import _path_bytes
from safeload._device import DeviceLike, device_string


def load_file(path: str | os.PathLike, device: DeviceLike = "cpu") -> Dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto ``device``.

    Each tensor is read into CPU memory with one positional read, then moved
    with ``Tensor.to(device)``. Raises ``safeload.SafetensorError`` for a
    malformed file and ``OSError`` when the file cannot be read.
    """
    return _C.reference_load_file(_path_bytes(path), device_string(device))
