"""safeload: fast, strict loading of safetensors files into PyTorch.

``safeload.load_file`` is a drop-in for ``safetensors.torch.load_file``;
``safeload.reference.load_file`` is the simple loader it is checked against.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch  # noqa: F401  (loads libtorch before the extension module)

from safeload import _C
from safeload._device import DeviceLike, device_string
from safeload._errors import SafetensorError

__all__ = ["load_file", "read_header", "SafetensorError", "DTYPES", "ERROR_CODES"]
__version__ = "0.1.0"

#: The format's dtypes and their sizes in bits, from safeload's one dtype table.
DTYPES: Dict[str, int] = dict(_C.dtype_table())
#: Every stable value of ``SafetensorError.code``.
ERROR_CODES = tuple(_C.error_codes())

DEFAULT_STAGING_BYTES = 256 << 20


def load_file(
    path: str | os.PathLike,
    device: DeviceLike = "cpu",
    *,
    threads: Optional[int] = None,
    chunk_bytes: Optional[int] = None,
    staging_bytes: int = DEFAULT_STAGING_BYTES,
    staged: bool = False,
    io: str = "auto",
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
    cache). The result is byte-identical to
    ``safeload.reference.load_file``.

    Raises ``safeload.SafetensorError`` (a ``ValueError``, with ``.code``) for
    a malformed file and ``OSError`` when the file cannot be read; nothing is
    returned on error.
    """
    for name, value in (("threads", threads), ("chunk_bytes", chunk_bytes)):
        if value is not None and value <= 0:
            raise SafetensorError(f"{name} must be positive, got {value}", "INVALID_ARGUMENT")
    return _C.load_file(
        os.fspath(path),
        device_string(device),
        threads or 0,
        chunk_bytes or 0,
        staging_bytes,
        staged,
        io,
    )


def read_header(path: str | os.PathLike) -> dict:
    """The validated header of a file: tensors (name, dtype, shape, begin,
    end) in data order, metadata (or None), and the section sizes."""
    return _C.read_header(os.fspath(path))


from safeload import reference  # noqa: E402  (submodule, after the API it uses)
