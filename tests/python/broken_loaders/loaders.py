"""Deliberately broken loaders, one defect each, for the conformance tests.

Every function has the loader signature ``(path, device)`` and is upstream
``safetensors.torch.load_file`` plus exactly one defect, chosen so that
exactly one named check of the harness catches it (the tests assert that).
"""
from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import time
from collections.abc import Mapping

import torch
from safetensors.torch import load_file as _load

MiB = 1 << 20


def good(path, device):
    return _load(path, device=device)


# -- leaks -----------------------------------------------------------------
_open_files = []


def leak_fds(path, device):
    """Keeps a handle on every file it loads (a forgotten close)."""
    _open_files.append(open(path, "rb"))
    return _load(path, device=device)


_stop = threading.Event()


def leak_threads(path, device):
    """Starts a reader thread per call that never ends (a forgotten join)."""
    threading.Thread(target=_stop.wait, daemon=True).start()
    return _load(path, device=device)


_kept = []


def leak_memory(path, device):
    """Keeps a copy of every result (a cache that is never evicted)."""
    out = _load(path, device=device)
    _kept.append({k: v.clone() for k, v in out.items()})
    return out


# -- concurrency -------------------------------------------------------------
_current = {}


def thread_unsafe(path, device):
    """Keeps the path being loaded in module state (a shared 'current file')."""
    _current["path"] = path
    time.sleep(0.02)
    return _load(_current["path"], device=device)


def process_unsafe(path, device):
    """Takes an exclusive, non-blocking lock on the file it loads, so a second
    process loading the same file at the same time fails."""
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError when another process holds it
        try:
            out = _load(path, device=device)
            time.sleep(0.3)
            return out
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- chunked reads -----------------------------------------------------------
def _header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def chunk_off_by_one(path, device, chunk=16 * MiB):
    """Reads the data section in 16 MiB chunks with an off-by-one: the last
    byte of every full chunk is never read (stays zero)."""
    ref = _load(path)
    header, start = _header(path)
    size = os.path.getsize(path) - start
    buf = bytearray(size)
    view = memoryview(buf)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            n = min(chunk, size - pos)
            want = n - 1 if n == chunk else n  # the bug
            got = os.pread(f.fileno(), want, start + pos)
            view[pos:pos + len(got)] = got
            pos += n
    out = {}
    for name, t in ref.items():
        b, e = header[name]["data_offsets"]
        raw = torch.frombuffer(bytearray(buf[b:e]), dtype=torch.uint8) if e > b else torch.empty(0, dtype=torch.uint8)
        out[name] = raw.view(t.dtype).reshape(t.shape).to(device) if e > b else t.to(device)
    return out


def _pread_all(fd, n, offset):
    """n bytes at offset: Linux returns at most 2 GiB - 4 KiB per pread."""
    parts = []
    while n > 0:
        got = os.pread(fd, min(n, 1 << 30), offset)
        if not got:
            break
        parts.append(got)
        n -= len(got)
        offset += len(got)
    return b"".join(parts)


def offsets_32bit(path, device):
    """Keeps data offsets in 32 bits: a tensor past 4 GiB reads the wrong bytes."""
    ref = _load(path)
    header, start = _header(path)
    out = {}
    with open(path, "rb") as f:
        for name, t in ref.items():
            b, e = header[name]["data_offsets"]
            raw = _pread_all(f.fileno(), e - b, start + (b & 0xFFFFFFFF))
            out[name] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(t.dtype).reshape(t.shape) if e > b else t
    return out


# -- what the user gets --------------------------------------------------------
def noncontiguous(path, device):
    """Hands out matrices transposed in memory (same values, column-major)."""
    out = _load(path, device=device)
    return {k: (v.t().contiguous().t() if v.dim() == 2 and min(v.shape) > 1 else v) for k, v in out.items()}


def requires_grad(path, device):
    """Marks floating-point tensors as requiring gradients."""
    out = _load(path, device=device)
    return {k: (v.requires_grad_(True) if v.is_floating_point() and v.dtype.itemsize > 1 else v) for k, v in out.items()}


class _Lazy(Mapping):
    """Reads a tensor's bytes only when it is first looked up, by path."""

    def __init__(self, path, device):
        self._path, self._device = path, device
        header, self._start = _header(path)
        self._offsets = {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}
        self._meta = {k: (v.dtype, v.shape) for k, v in _load(path).items()}

    def __getitem__(self, name):
        dtype, shape = self._meta[name]
        b, e = self._offsets[name]
        with open(self._path, "rb") as f:
            raw = os.pread(f.fileno(), e - b, self._start + b)
        if e == b:
            return torch.empty(shape, dtype=dtype, device=self._device)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).to(self._device)

    def __iter__(self):
        return iter(self._meta)

    def __len__(self):
        return len(self._meta)


def lazy(path, device):
    """Returns a mapping that reads each tensor from the path on first access,
    after the call has returned."""
    return _Lazy(path, device)


# -- differences from upstream (information, never a failure) -------------------
def reversed_order(path, device):
    out = _load(path, device=device)
    return dict(reversed(list(out.items())))


def runtime_errors(path, device):
    try:
        return _load(path, device=device)
    except Exception as e:
        raise RuntimeError(f"cannot load {path}: {e}") from None


# -- crashes and hangs (for the executable testee path) ------------------------
def crashy(path, device):
    base = os.path.basename(path)
    if base.startswith("y_dtype_BF16"):
        os.abort()
    if base.startswith("n_offsets_overlap"):
        time.sleep(3600)
    return _load(path, device=device)
