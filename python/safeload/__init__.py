"""safeload: fast, strict loading of safetensors files into PyTorch.

``safeload.load_file`` is a drop-in for ``safetensors.torch.load_file``,
``safeload.load`` for ``safetensors.torch.load``, ``safeload.safe_open`` for
``safetensors.safe_open``; ``safeload.load_checkpoint`` loads a sharded
checkpoint in one call; ``safeload.patch()`` routes upstream's functions
(and so transformers, diffusers, accelerate) through safeload.
``safeload.reference.load_file`` is the simple loader everything is checked
against.
"""
from __future__ import annotations

import os
from typing import Dict, Optional  # noqa: F401

import torch  # noqa: F401  (loads libtorch before the extension module)

from safeload import _extension

# The compiled extension, or a stand-in that raises ExtensionMissing (an ImportError) when
# used: the conformance harness imports this package and runs without the extension.
_C = _extension.load()

from safeload import _loading  # noqa: E402
from safeload._device import DeviceLike  # noqa: E402
from safeload._errors import SafetensorError  # noqa: E402

__all__ = ["load_file", "load", "load_checkpoint", "safe_open", "patch", "unpatch", "read_header",
           "SafetensorError", "DTYPES", "ERROR_CODES"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Read from the C++ core when first asked for, so that importing the package needs no
    # extension: DTYPES (the format's dtypes and their sizes in bits, from safeload's one
    # dtype table), ERROR_CODES (every stable value of SafetensorError.code), LIMITS (the
    # format's limits and the load options' bounds).
    if name == "DTYPES":
        value: object = dict(_C.dtype_table())
    elif name == "ERROR_CODES":
        value = tuple(_C.error_codes())
    elif name == "LIMITS":
        value = dict(_C.constants())
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def load_file(
    path: str | os.PathLike,
    device: DeviceLike = "cpu",
    *,
    threads: Optional[int] = None,
    chunk_bytes: Optional[int] = None,
    staging_bytes: Optional[int] = None,
    staged: bool = False,
    io: str = "auto",
    prefault: bool = True,
    backend: Optional[str] = None,
    report: Optional[dict] = None,
) -> Dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto ``device``, fast.

    All destination tensors are allocated first; the file is then read with
    parallel positional reads straight into them where the memory is
    host-writable (CPU), or through a bounded ring of pinned staging buffers
    overlapped with asynchronous copies (CUDA and other devices), at most
    ``staging_bytes`` of host memory. ``staged=True`` forces the staged path
    even for CPU. ``io`` says whether reads go through the page cache:
    ``"auto"`` (default) copies what the page cache already holds from it and
    reads the rest of a CPU load with ``O_DIRECT`` into small bounce buffers,
    so no page-cache copy of a cold file is made only to be copied again;
    ``"cached"`` always reads through the page cache, ``"uncached"`` never
    does (where ``O_DIRECT`` is unsupported both fall back to the page
    cache). ``prefault`` (Linux, CPU, reads that bypass the page cache)
    populates the destinations' pages from one more thread ahead of the
    readers: new pages come in bulk rather than one fault at a time inside
    the copies, and that work overlaps the reads; ``False`` lets each page
    fault in where a read first writes it. The result is byte-identical to
    ``safeload.reference.load_file``. ``report``, a dict, is filled with what
    the load did: the route (``"host"``: straight into host memory, or
    ``"staged"``), threads, chunk size, slots, and the reads and bytes that
    bypassed the page cache. ``backend`` (upstream's ``"mmap"`` or
    ``"pread"``) is accepted and reads the same way: the tensors own their
    memory, as with upstream's ``"pread"``; anything else is
    ``SafetensorError`` ``INVALID_ARGUMENT`` as upstream refuses it.

    Raises ``safeload.SafetensorError`` (a ``ValueError``, with ``.code``) for
    a malformed file and ``OSError`` when the file cannot be read; nothing is
    returned on error.
    """
    return _loading.load([path], device, threads=threads, chunk_bytes=chunk_bytes,
                         staging_bytes=staging_bytes, staged=staged, io=io, prefault=prefault,
                         backend=backend, report=report)


def load(data: bytes, device: DeviceLike = "cpu", **options) -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load``: the tensors of a safetensors file held in
    memory (``bytes``, ``bytearray`` or ``memoryview``), in file order, on
    ``device`` (upstream's ``load`` has no device: CPU). Checked and loaded
    like a file (same errors, messages say ``<bytes>`` for the path);
    ``options`` are ``load_file``'s."""
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    options.setdefault("io", "cached")  # the bytes are in memory: no device to bypass
    with _memory_file(data) as path:
        try:
            return _loading.load([path], device, **options)
        except SafetensorError as e:
            raise SafetensorError(str(e).replace(path, "<bytes>"), e.code) from None


class _memory_file:
    """A path to a file holding ``data``: an anonymous memory file
    (``memfd_create``, Linux) or, elsewhere, a private temporary file;
    gone once the block ends."""

    def __init__(self, data):
        self._data = data
        self._fd = -1
        self._tmp: Optional[str] = None

    def __enter__(self) -> str:
        view = memoryview(self._data).cast("B")
        if hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("safeload-bytes", getattr(os, "MFD_CLOEXEC", 0))
            path = f"/proc/self/fd/{self._fd}"
        else:
            import tempfile
            self._fd, self._tmp = tempfile.mkstemp(suffix=".safetensors")
            path = self._tmp
        try:
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:done + (1 << 30)])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return path

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            os.unlink(self._tmp)
            self._tmp = None


def load_checkpoint(src, device: DeviceLike = "cpu", *, progress=None,
                    **options) -> Dict[str, torch.Tensor]:
    """Load a whole checkpoint in one call: ``src`` is a ``.safetensors``
    file, a directory (its ``*.safetensors.index.json``, or without one every
    ``.safetensors`` file in it, sorted), an ``*.index.json``, or a list of
    files.

    Every shard's header is read and validated, and the index checked
    against them, before anything is allocated; then one plan over all
    shards runs on one set of reader threads with one staging ring
    (``staging_bytes`` in all, whatever the number of shards). The result is
    in file order, shard by shard, as upstream's per-shard ``load_file``
    calls would build it.

    ``progress``: ``True`` draws a bar on stderr, ``False`` never, ``None``
    (default) only when stderr is a terminal and the load is long (over
    2 s, or 1 GiB or more); a callable is called with ``(bytes_done,
    bytes_total)``. ``options`` are ``load_file``'s.

    Errors (nothing is returned, everything allocated is freed): an index
    that maps a tensor to a shard lacking it, or a shard holding a tensor the
    index maps elsewhere or not at all: ``SafetensorError`` ``INVALID_INDEX``;
    a tensor in two shards: ``DUPLICATE_NAME``; a missing shard:
    ``FileNotFoundError``; a malformed shard: its usual code, the message
    naming the shard.
    """
    from safeload import _progress

    return _loading.load(src, device, progress=_progress.resolve(progress), **options)


def read_header(path: str | os.PathLike) -> dict:
    """The validated header of a file: tensors (name, dtype, shape, begin,
    end) in data order, metadata (or None), and the section sizes."""
    return _C.read_header(_loading._path_bytes(path))


from safeload import reference  # noqa: E402  (submodules, after the API they use)
from safeload.safe_open import safe_open  # noqa: E402
from safeload.patch import patch, unpatch  # noqa: E402
