"""Page-cache control for cold and warm runs.

Cold: ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` asks Linux to drop the file's clean,
unmapped pages from the page cache. It needs no privilege and touches no other file, unlike
writing to /proc/sys/vm/drop_caches. It cannot drop dirty pages (generated files are fsynced)
or pages another process has mapped, so every run checks what is resident with ``mincore(2)``
and records that fraction next to its time.

Warm: the file is read once through the page cache and then checked to be fully resident.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

_PAGE = mmap.PAGESIZE
_libc = None


def _lib():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.mmap.restype = ctypes.c_void_p
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.munmap.restype = ctypes.c_int
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.mincore.restype = ctypes.c_int
        _libc = libc
    return _libc


def evict(path: str | os.PathLike) -> None:
    """Drop the file's pages from the page cache (cold start). Written-back
    first: the kernel keeps dirty pages, so a file just written would stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: str | os.PathLike) -> float | None:
    """Fraction of the file's pages in the page cache, or None where mincore is unavailable.

    Mapping the file faults no page in, so the check does not disturb what it measures.
    """
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    try:
        libc = _lib()
    except (OSError, AttributeError):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            resident = _count(vec)
            return resident / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _count(vec) -> int:
    # Only the lowest bit of each byte is defined by mincore(2).
    import numpy as np

    return int(np.count_nonzero(np.frombuffer(vec, dtype=np.uint8) & 1))


def warm(path: str | os.PathLike, chunk: int = 16 << 20) -> None:
    """Read the whole file through the page cache so that a warm run finds it resident."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
