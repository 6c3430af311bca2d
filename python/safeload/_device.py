"""Device argument handling shared by both loaders."""
from __future__ import annotations

from typing import Union

import torch

DeviceLike = Union[str, int, torch.device]


def device_string(device: DeviceLike) -> str:
    """'cpu', 'cuda:0', ... from anything torch accepts as a device."""
    if isinstance(device, int):  # safetensors.torch.load_file accepts a CUDA ordinal
        return f"cuda:{device}"
    return str(torch.device(device))
