"""The one way Python starts a load: a blocking call or a background handle.

Every public entry point (``load_file``, ``load_checkpoint``, ``safe_open``,
``load``) goes through here, so options, progress, Ctrl-C and the result's
key order are handled once.

INTERIM: this version runs every load synchronously through ``_C.load_file``
one file at a time; the C++ background loader replaces it. The signatures are
the contract.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from safeload import _C
from safeload._device import DeviceLike, device_string

PathLike = Union[str, bytes, os.PathLike]
Source = Union[PathLike, Sequence[PathLike]]
Progress = Union[bool, None, Callable[[int, int], None]]


def checkpoint_files(src: Source) -> List[str]:
    """The shard files ``src`` names: a ``.safetensors`` file, a directory
    (its ``*.safetensors.index.json`` or its single/all ``.safetensors``
    files), an ``*.index.json``, or a list of files."""
    if isinstance(src, (list, tuple)):
        return [os.fsdecode(p) for p in src]
    return [os.fsdecode(src)]


def load(src: Source, device: DeviceLike = "cpu", *, progress: Progress = None,
         **options) -> Dict[str, torch.Tensor]:
    """Loads every tensor of every shard of ``src``; blocks until done.
    Ctrl-C cancels it (KeyboardInterrupt, nothing kept)."""
    out: Dict[str, torch.Tensor] = {}
    for path in checkpoint_files(src):
        out.update(_C.load_file(path, device_string(device), options.get("threads") or 0,
                                options.get("chunk_bytes") or 0,
                                options.get("staging_bytes", 256 << 20),
                                options.get("staged", False), options.get("io", "auto")))
    return out


class Loading:
    """A load running in the background. ``wait(name)`` returns one tensor
    as soon as its bytes are in (reading it in the caller's thread if the
    background has not reached it); ``close()`` cancels the rest and frees
    what was not handed out."""

    def __init__(self, src: Source, device: DeviceLike = "cpu", *, prefetch: bool = True,
                 **options):
        self._tensors: Optional[Dict[str, torch.Tensor]] = load(src, device, **options)

    def names(self) -> List[str]:
        """Tensor names in file order (shard by shard)."""
        assert self._tensors is not None
        return list(self._tensors)

    def wait(self, name: str) -> torch.Tensor:
        assert self._tensors is not None
        return self._tensors[name]

    def wait_all(self) -> Dict[str, torch.Tensor]:
        assert self._tensors is not None
        return dict(self._tensors)

    def close(self) -> None:
        self._tensors = None

    def report(self) -> dict:
        return {}
