"""The one way Python starts a load: a blocking call or a background handle.

Every public entry point (``load_file``, ``load_checkpoint``, ``safe_open``,
``load``) goes through here, so options, paths, progress, Ctrl-C and the
result's key order are handled once. The C++ side (``_C.Loading``) validates
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

#: The options every load accepts, with their defaults (None: automatic).
OPTIONS = {"threads": None, "chunk_bytes": None, "staging_bytes": None, "staged": False, "io": "auto",
           "prefault": True}


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


def _options(options: dict) -> dict:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unexpected load option(s): {', '.join(sorted(unknown))}; "
                        f"accepted: {', '.join(OPTIONS)}")
    return {**OPTIONS, **options}


def checkpoint_files(src: Source) -> List[str]:
    """The shard files ``src`` names, as a load resolves them: a
    ``.safetensors`` file, a directory (its ``*.safetensors.index.json``, or
    without one every ``.safetensors`` file in it, sorted), an
    ``*.index.json``, or a list of files."""
    files, one = _sources(src)
    if one:
        files = _C.resolve_checkpoint(one)[0]
    return [os.fsdecode(f) for f in files]


def _start(files: List[bytes], one: bytes, device: DeviceLike, only: Optional[List[str]],
           options: dict) -> "_C.Loading":
    o = _options(options)
    return _C.Loading(files, one, device_string(device), o["threads"], o["chunk_bytes"],
                      o["staging_bytes"], bool(o["staged"]), o["io"], only, prefault=bool(o["prefault"]))


def load(src: Source, device: DeviceLike = "cpu", *, progress: Optional[ProgressFn] = None,
         report: Optional[dict] = None, **options) -> Dict[str, torch.Tensor]:
    """Loads every tensor of every shard of ``src``; blocks until done.

    ``progress(bytes_done, bytes_total)`` is called about ten times a second.
    ``report``, a dict, is filled with what the load did (route, threads,
    chunk size, reads that bypassed the page cache, ...), also when it fails
    or is interrupted (``bytes_done`` then says how far it got). The result is in
    file order, shard by shard, as upstream's ``load_file`` orders one file.
    """
    files, one = _sources(src)
    loading = _start(files, one, device, None, options)
    try:
        return dict(loading.wait_all(progress))
    finally:
        loading.release()
        if report is not None:  # also for a load that failed or was interrupted: how far it got
            report.update(loading.report())
        # A traceback keeps this frame alive: drop the handle so its files
        # close now, not when the exception is forgotten.
        del loading


class Loading:
    """A load of ``src`` running in the background.

    With ``prefetch=True`` every tensor is allocated and reading starts at
    once; ``wait(name)`` returns a tensor as soon as its own bytes are in.
    With ``prefetch=False`` nothing is read until ``wait(name)`` asks, and
    then only that tensor (a caller that wants a few tensors pays for those
    alone). ``close()`` cancels what is still being read and frees every
    tensor not handed out.
    """

    def __init__(self, src: Source, device: DeviceLike = "cpu", *, prefetch: bool = True, **options):
        self._device = device
        self._options = _options(options)
        files, one = _sources(src)
        if prefetch:
            self._loading: Optional[_C.Loading] = _start(files, one, device, None, self._options)
            self._names = self._loading.names()
            self._source = files
        else:
            self._loading = None
            _C.check_options(self._options["threads"], self._options["chunk_bytes"],
                             self._options["staging_bytes"], bool(self._options["staged"]),
                             self._options["io"], device_string(device))
            # Validated once; each wait(name) then loads one tensor of it.
            self._source = _C.Checkpoint(files, one)
            self._names = self._source.names()
        self._known = frozenset(self._names)
        self._closed = False

    def names(self) -> List[str]:
        """Every tensor name in file order (shard by shard)."""
        return list(self._names)

    def wait(self, name: str) -> torch.Tensor:
        """The tensor ``name``, once its bytes are in. KeyError if absent."""
        if self._closed:
            raise ValueError("the load was closed")
        if self._loading is not None:
            return self._loading.wait(name)
        if name not in self._known:
            raise KeyError(name)
        one = _start(self._source, b"", self._device, [name], self._options)
        try:
            return one.wait(name)
        finally:
            one.release()
            del one

    def wait_all(self, progress: Optional[ProgressFn] = None) -> Dict[str, torch.Tensor]:
        """Every tensor, in file order, once all are in."""
        if self._closed:
            raise ValueError("the load was closed")
        if self._loading is None:
            self._loading = _start(self._source, b"", self._device, None, self._options)
        return dict(self._loading.wait_all(progress))

    def done(self) -> bool:
        return self._loading is not None and self._loading.done()

    def report(self) -> dict:
        """What the background load did so far (empty without one)."""
        return self._loading.report() if self._loading is not None else {}

    def close(self) -> None:
        """Cancels reading and frees what was not handed out. Idempotent."""
        self._closed = True
        if self._loading is not None:
            self._loading.release()
            self._loading = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
