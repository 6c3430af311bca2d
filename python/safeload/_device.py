"""Device argument handling shared by both loaders."""
from __future__ import annotations

from typing import Union

import torch

DeviceLike = Union[str, int, torch.device]


def device_string(device: DeviceLike) -> str:
    """'cpu', 'cuda:0', ... from anything torch accepts as a device. Strings
    pass through unchanged: the C++ side validates them (INVALID_ARGUMENT)."""
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"device must be a str, int or torch.device, not {type(device).__name__}")
    if isinstance(device, int):  # safetensors.torch.load_file accepts a CUDA ordinal
        return f"cuda:{device}"
    return str(device)
