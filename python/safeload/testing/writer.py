"""A small safetensors writer with full control over every byte it emits.

It is deliberately independent of upstream's writer: the fixture corpus, the
property-based strategies and the conformance harness use it to produce valid
files *and* files that break exactly one rule, so it can express what no
well-behaved writer would (holes, overlaps, duplicate names, a lying length
prefix, raw header bytes, trailing garbage, truncation).

A file is described by a list of :class:`TensorSpec` (name, dtype string,
shape, raw little-endian bytes) plus :class:`Layout` options, and rendered by
:func:`build`. With default options the result is a valid file laid out the
way upstream lays one out: tensors back to back in list order, metadata first,
header padded with spaces to a multiple of 8 bytes.

Dtype sizes and the header length limit come from the harness's own statement
of the format, :mod:`safeload.testing.format`, never from the loaders it tests.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from safeload.testing import format

__all__ = [
    "DELETE",
    "Raw",
    "TensorSpec",
    "Layout",
    "Built",
    "build",
    "build_header",
    "max_header_length",
    "dtype_bits",
    "dtype_names",
    "element_quantum",
    "nbytes_of",
    "numel_of",
    "deterministic_bytes",
    "tensor_bytes",
    "encode_json",
    "sha256",
]

# Size of the little-endian length prefix before the header (the framing
# struct.pack("<Q") writes, not a limit).
PREFIX_BYTES = 8


def _table() -> dict[str, int]:
    return format.DTYPE_BITS


def max_header_length() -> int:
    """The largest header length the format allows."""
    return format.MAX_HEADER_LENGTH


MAX_HEADER_LENGTH = format.MAX_HEADER_LENGTH


def dtype_names() -> list[str]:
    """All dtype spellings of the format, in the format's order."""
    return list(_table())


def dtype_bits(dtype: str) -> int:
    """Size of one element of ``dtype`` in bits; KeyError if not a format dtype."""
    return _table()[dtype]


def numel_of(shape: Sequence[int]) -> int:
    return math.prod(shape)


def element_quantum(dtype: str) -> int:
    """Smallest element count whose size is a whole number of bytes (1 for
    byte-sized dtypes, 2 for F4, 4 for F6_*)."""
    bits = dtype_bits(dtype)
    return 8 // math.gcd(bits, 8)


def nbytes_of(dtype: str, shape: Sequence[int]) -> int:
    """Byte size of a tensor; ValueError if it is not a whole number of bytes."""
    bits = numel_of(shape) * dtype_bits(dtype)
    if bits % 8:
        raise ValueError(f"{numel_of(shape)} elements of {dtype} are {bits} bits, not whole bytes")
    return bits // 8


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deterministic_bytes(seed: str | bytes, n: int) -> bytes:
    """``n`` pseudo-random bytes that depend only on ``seed`` (SHA-256 in
    counter mode), so generated files never change with library versions."""
    if isinstance(seed, str):
        seed = seed.encode("utf-8")
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


def tensor_bytes(seed: str | bytes, dtype: str, shape: Sequence[int]) -> bytes:
    """Deterministic raw contents for a tensor. BOOL gets only 0/1 bytes (other
    values are not booleans in any framework); everything else gets arbitrary
    bit patterns, NaNs included, which is fine because loaders are compared on
    raw bytes."""
    data = deterministic_bytes(seed, nbytes_of(dtype, shape))
    if dtype == "BOOL":
        data = bytes(b & 1 for b in data)
    return data


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: Use as a value in :attr:`Layout.entry_overrides` to remove a field.
DELETE = _Delete()


@dataclasses.dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim where a value is expected (for things
    ``json`` cannot spell: ``1.0`` vs ``1``, huge integers, deep nesting)."""

    text: str


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def random(cls, name: str, dtype: str, shape: Sequence[int], seed: str | None = None) -> "TensorSpec":
        """A tensor with deterministic contents derived from ``seed`` (default: its name)."""
        shape = tuple(shape)
        return cls(name, dtype, shape, tensor_bytes(seed if seed is not None else name, dtype, shape))


@dataclasses.dataclass
class Layout:
    """Everything about how a file is rendered. Defaults give a valid file."""

    #: ``__metadata__`` map (or any JSON value, to write an invalid one); None = absent.
    metadata: Any = None
    #: Position of ``__metadata__`` among the header's keys (0 = first).
    metadata_position: int = 0
    #: Order of tensor names in the JSON header; default: the order given.
    json_order: Sequence[str] | None = None
    #: Order of tensors in the data section; default: the order given.
    data_order: Sequence[str] | None = None
    #: Extra bytes inserted in the data section before the named tensor (holes).
    gaps: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    #: Replace ``data_offsets`` of a tensor as written (the data stays where it is).
    offsets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Per tensor: fields to replace/add in its header entry (DELETE removes one).
    entry_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    #: Whole header entries to write instead of a tensor's computed entry.
    entry_replacements: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Additional (key, value) pairs appended to the header object (duplicates allowed).
    extra_entries: Sequence[tuple[str, Any]] = ()
    #: Header padding: byte used and alignment of ``8 + len(header)``; 1 = no padding.
    pad_byte: bytes = b" "
    align: int = 8
    #: Bytes before the JSON text (inside the declared header).
    leading: bytes = b""
    #: Escape non-ASCII characters as ``\\uXXXX``.
    ensure_ascii: bool = False
    #: Header bytes to use verbatim instead of the generated JSON (no padding added).
    header_override: bytes | None = None
    #: Length prefix value to write instead of the header's length.
    length_override: int | None = None
    #: Bytes appended after the data section.
    trailing: bytes = b""
    #: Cut the finished file to this many bytes (negative: drop that many from the end).
    truncate: int | None = None


@dataclasses.dataclass(frozen=True)
class Built:
    """A rendered file and where things ended up in it."""

    data: bytes
    header: bytes  # the header bytes as written (after the prefix, padding included)
    data_start: int  # file offset of the data section
    offsets: dict[str, tuple[int, int]]  # computed data_offsets of each tensor


def encode_json(value: Any, ensure_ascii: bool = False) -> str:
    """Compact JSON for dicts, (key, value) pair lists (``_Pairs``), lists,
    strings, ints, floats, bools, None and :class:`Raw`."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, _Pairs):
        return "{" + ",".join(
            _encode_str(k, ensure_ascii) + ":" + encode_json(v, ensure_ascii) for k, v in value.items
        ) + "}"
    if isinstance(value, Mapping):
        return "{" + ",".join(
            _encode_str(k, ensure_ascii) + ":" + encode_json(v, ensure_ascii) for k, v in value.items()
        ) + "}"
    if isinstance(value, str):
        return _encode_str(value, ensure_ascii)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("JSON has no NaN or infinity; use Raw() to write one anyway")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode_json(v, ensure_ascii) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _encode_str(s: str, ensure_ascii: bool) -> str:
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif ensure_ascii and ord(ch) > 0x7E:
            code = ord(ch)
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


class _Pairs:
    """An ordered JSON object that may repeat keys."""

    def __init__(self, items: Iterable[tuple[str, Any]]):
        self.items = list(items)


def build(tensors: Sequence[TensorSpec], layout: Layout | None = None) -> Built:
    """Render a file. Raises ValueError on a spec that contradicts itself in a
    way the writer cannot honour (duplicate names in ``tensors``, unknown names
    in the layout); anything merely *invalid for the format* is written as asked."""
    layout = layout or Layout()
    by_name: dict[str, TensorSpec] = {}
    for t in tensors:
        if t.name in by_name:
            raise ValueError(f"tensor {t.name!r} given twice; use Layout.extra_entries for duplicates")
        by_name[t.name] = t
    for field in ("gaps", "offsets", "entry_overrides", "entry_replacements"):
        unknown = set(getattr(layout, field)) - set(by_name)
        if unknown:
            raise ValueError(f"Layout.{field} names unknown tensors {sorted(unknown)}")

    data_order = list(layout.data_order) if layout.data_order is not None else [t.name for t in tensors]
    json_order = list(layout.json_order) if layout.json_order is not None else [t.name for t in tensors]
    for order, what in ((data_order, "data_order"), (json_order, "json_order")):
        if sorted(order) != sorted(by_name):
            raise ValueError(f"Layout.{what} must list every tensor exactly once")

    data = bytearray()
    offsets: dict[str, tuple[int, int]] = {}
    for name in data_order:
        data += layout.gaps.get(name, b"")
        begin = len(data)
        data += by_name[name].data
        offsets[name] = (begin, len(data))

    items: list[tuple[str, Any]] = []
    for name in json_order:
        t = by_name[name]
        if name in layout.entry_replacements:
            items.append((name, layout.entry_replacements[name]))
            continue
        entry: dict[str, Any] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": list(layout.offsets.get(name, offsets[name])),
        }
        for key, value in layout.entry_overrides.get(name, {}).items():
            if value is DELETE:
                entry.pop(key, None)
            else:
                entry[key] = value
        items.append((name, entry))
    header = _render_header(items, layout)
    length = len(header) if layout.length_override is None else layout.length_override
    out = struct.pack("<Q", length) + header + bytes(data) + layout.trailing
    if layout.truncate is not None:
        out = out[: layout.truncate]
    return Built(data=out, header=header, data_start=PREFIX_BYTES + len(header), offsets=offsets)


def _render_header(items: list[tuple[str, Any]], layout: Layout) -> bytes:
    """The header bytes for these (name, entry) items: metadata placed,
    extra entries appended, JSON encoded, padded as the layout says."""
    items = list(items)
    if layout.metadata is not None:
        items.insert(min(layout.metadata_position, len(items)), ("__metadata__", layout.metadata))
    items.extend(layout.extra_entries)
    if layout.header_override is not None:
        return bytes(layout.header_override)
    header = layout.leading + encode_json(_Pairs(items), layout.ensure_ascii).encode("utf-8")
    if layout.align > 1:
        header += layout.pad_byte * ((-(PREFIX_BYTES + len(header))) % layout.align)
    return header


def build_header(tensors: Sequence[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str] | None = None) -> Built:
    """The start of a valid file, without its data section: for files too
    large to render in memory. ``tensors`` are ``(name, dtype, shape)``,
    laid out back to back in the order given, as :func:`build` lays them out;
    ``metadata`` becomes ``__metadata__``, first. ``Built.data`` is the length
    prefix and the padded header; the caller writes each tensor's bytes
    (``Built.offsets``, relative to ``Built.data_start``) after it."""
    items: list[tuple[str, Any]] = []
    offsets: dict[str, tuple[int, int]] = {}
    end = 0
    for name, dtype, shape in tensors:
        if name in offsets:
            raise ValueError(f"tensor {name!r} given twice")
        begin, end = end, end + nbytes_of(dtype, shape)
        offsets[name] = (begin, end)
        items.append((name, {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}))
    header = _render_header(items, Layout(metadata=dict(metadata) if metadata is not None else None))
    return Built(data=struct.pack("<Q", len(header)) + header, header=header,
                 data_start=PREFIX_BYTES + len(header), offsets=offsets)
