"""The safetensors format as the test writer and the conformance harness state it: dtype
sizes and the header limits, written out here rather than read from safeload's compiled core,
so that the harness runs where that core cannot be built and a fault in it cannot hide from
the tests that use this table. A test (tests/python/test_fixtures.py) checks this table
against the C++ core's.

Sizes in bits, in the order the format lists the dtypes (F4 and F6 are sub-byte; a tensor's
size must still be a whole number of bytes).
"""
from __future__ import annotations

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "I16": 16,
    "U16": 16,
    "I32": 32,
    "U32": 32,
    "I64": 64,
    "U64": 64,
    "F16": 16,
    "BF16": 16,
    "F32": 32,
    "F64": 64,
    "C64": 64,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: The largest header the format allows, in bytes (upstream's limit).
MAX_HEADER_LENGTH = 100_000_000
#: The deepest JSON nesting a header may have.
MAX_JSON_DEPTH = 64
