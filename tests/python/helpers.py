"""Helpers shared by the pytest modules (test modules never import each other).

pytest puts this directory on ``sys.path`` (rootdir-relative test files, no
``__init__.py``), so test modules import it as ``helpers``.
"""
from __future__ import annotations

import struct

import torch

import safeload


def raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's bytes in memory order (bit patterns, not values: NaNs compare)."""
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


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
