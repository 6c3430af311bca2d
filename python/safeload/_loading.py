"""The one way Python starts a load: ``start`` (a ``_C.Loading`` of the whole
checkpoint, or of the tensors and ranges a request names, or of one share)
and ``load`` (start, wait for all, return the tensors).

Every public entry point (``load_file``, ``load_checkpoint``, ``safe_open`` and
its slices and ``prefetch``, ``load``, ``distributed``) goes through here, so
options, paths, progress, Ctrl-C and the result's key order are handled once. The C++ side (``_C.Loading``) validates
the options and every shard's header, allocates every destination, then reads
on its own threads; waits release the GIL and poll for signals, so Ctrl-C
cancels a load within about a tenth of a second, frees what it allocated and
raises ``KeyboardInterrupt``.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from safeload import _C
from safeload._device import DeviceLike, device_string

PathLike = Union[str, bytes, os.PathLike]
Source = Union[PathLike, Sequence[PathLike]]
ProgressFn = Callable[[int, int], None]


def _path_bytes(path: PathLike) -> bytes:
    """A path as the bytes the OS sees (``os.fsencode``), so any name (from
    ``os.listdir``, with surrogate escapes, or bytes) round-trips. An embedded
    NUL is a ValueError, as Python's ``open`` raises."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"expected str, bytes or os.PathLike, not {type(path).__name__}")
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


def _sources(src: Source) -> Tuple[List[bytes], bytes]:
    """(files, b"") for an explicit list of files; ([], src) for one path,
    which the C++ side resolves (file, directory or index)."""
    if isinstance(src, (list, tuple)):
        if not src:
            raise ValueError("an empty list of files names no checkpoint")
        return [_path_bytes(p) for p in src], b""
    return [], _path_bytes(src)


def checkpoint_files(src: Source) -> List[str]:
    """The shard files ``src`` names, as a load resolves them: a
    ``.safetensors`` file, a directory (its ``*.safetensors.index.json``, or
    without one every ``.safetensors`` file in it, sorted), an
    ``*.index.json``, or a list of files."""
    files, one = _sources(src)
    if one:
        files = _C.resolve_checkpoint(one)[0]
    return [os.fsdecode(f) for f in files]


def start(src: Union[Source, "_C.Checkpoint"], device: DeviceLike = "cpu", *,
          request: Optional[Dict[str, Optional[Tuple[int, int, int]]]] = None,
          share: Optional[Tuple[int, int]] = None, **options) -> "_C.Loading":
    """Starts a load: of ``src`` (a source, or a ``_C.Checkpoint`` opened
    before), every tensor whole, or what ``request`` asks (``{name: None}``
    for a whole tensor, ``{name: (dim, start, stop)}`` for a range of one
    dimension in torch's sizes), or share ``(part, parts)`` of it. The load
    options go to the C++ side as given, which checks them (an unknown name
    is a TypeError) and keeps its defaults for the rest."""
    if isinstance(src, _C.Checkpoint):
        files, one = src, b""
    else:
        files, one = _sources(src)
    return _C.Loading(files, one, device_string(device), request, share, **options)


def load(src: Source, device: DeviceLike = "cpu", *, progress: Optional[ProgressFn] = None,
         report: Optional[dict] = None, **options) -> Dict[str, torch.Tensor]:
    """Loads every tensor of every shard of ``src``; blocks until done.

    ``progress(bytes_done, bytes_total)`` is called about ten times a second.
    ``report``, a dict, is filled with what the load did (route, threads,
    chunk size, reads that bypassed the page cache, ...), also when it fails
    or is interrupted (``bytes_done`` then says how far it got). The result is in
    file order, shard by shard, as upstream's ``load_file`` orders one file.
    """
    loading = start(src, device, **options)
    try:
        return dict(loading.wait_all(progress))
    finally:
        loading.release()
        if report is not None:  # also for a load that failed or was interrupted: how far it got
            report.update(loading.report())
        # A traceback keeps this frame alive: drop the handle so its files
        # close now, not when the exception is forgotten.
        del loading
