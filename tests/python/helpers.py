"""Helpers shared by the pytest modules (test modules never import each other).

pytest puts this directory on ``sys.path`` (rootdir-relative test files, no
``__init__.py``), so test modules import it as ``helpers``.
"""
from __future__ import annotations

import struct

import torch

import safeload


def raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's bytes in row-major order, read on the CPU (bit patterns, not values:
    NaNs compare)."""
    if not t.numel():
        return b""
    # A copy into a fresh stride-1 buffer: a "contiguous" tensor may still have odd strides on
    # dimensions of size 1 (an index with None or a step), which view() refuses.
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().cpu().reshape(-1))
    return flat.view(torch.uint8).numpy().tobytes()


def assert_same(loaded: dict, expected: dict) -> None:
    """Same names, and per tensor the same dtype, shape and bytes."""
    assert set(loaded) == set(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert tuple(got.shape) == tuple(want.shape), name
        assert raw_bytes(got) == raw_bytes(want), name


def write_raw(path, header: bytes, data: bytes = b"") -> str:
    """A file of the length prefix, ``header`` verbatim and ``data``."""
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)
    return str(path)


# One malformed file per format error code, written by hand here (the fixture
# corpus covers many more; see test_fixtures.py): code -> (header, data), or
# (None, whole file).
MALFORMED = {
    "HEADER_TOO_SMALL": (None, b"\x01\x02"),
    "HEADER_TOO_LARGE": (None, struct.pack("<Q", safeload.LIMITS["max_header_length"] + 1) + b"{}"),
    "INVALID_HEADER_LENGTH": (None, struct.pack("<Q", 50) + b"{}"),
    "INVALID_HEADER_UTF8": (b'{"\xff":1}', b""),
    "INVALID_JSON": (b'{"a":', b""),
    "INVALID_HEADER": (b"[]", b""),
    "INVALID_METADATA": (b'{"__metadata__":{"a":1}}', b""),
    "UNKNOWN_DTYPE": (b'{"a":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}}', b"abcd"),
    "INVALID_OFFSET": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"abcdefgh"),
    "VALIDATION_OVERFLOW": (b'{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}', b"abcd"),
    "TENSOR_INVALID_INFO": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"abcd"),
    "MISALIGNED_SLICE": (b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"ab"),
    "METADATA_INCOMPLETE_BUFFER": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"abcde"),
    "DUPLICATE_NAME": (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"a"),
    "RESERVED_NAME": (b'{"__metadata__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"a"),
    "UNKNOWN_FIELD": (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":"y"}}', b"a"),
    "UNSUPPORTED_DTYPE": (b'{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}', b"abc"),
}


def evictable_dir(tmp_path_factory, name: str) -> str:
    """A fresh directory on a file system whose files can leave the page cache (and so be
    read cold): the run's temporary directory, or where that is tmpfs (which holds files in
    the page cache: TMPDIR=/dev/shm/...) /var/tmp or the checkout's build directory. Skips
    the test, saying why, where there is none."""
    import os
    import tempfile

    import pytest

    from safeload.bench import cache

    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [str(tmp_path_factory.mktemp(name)), "/var/tmp", os.path.join(here, "..", "..", "build")]
    for base in candidates:
        if not os.path.isdir(base) or not os.access(base, os.W_OK):
            continue
        d = base
        if base != candidates[0]:
            import atexit
            import shutil

            d = tempfile.mkdtemp(prefix=f"safeload-{name}-", dir=base)
            atexit.register(shutil.rmtree, d, True)
        probe = os.path.join(d, ".evict_probe")
        with open(probe, "wb") as f:
            f.write(b"\1" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
        cache.evict(probe)
        resident = cache.resident_fraction(probe)
        os.unlink(probe)
        if resident is not None and resident < 0.5:
            return d
    pytest.skip("no directory here is on a file system that can drop a file from the page cache "
                f"(tried {', '.join(candidates)}): a cold read cannot be made")
