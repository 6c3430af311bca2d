"""Hypothesis strategies for safetensors files, built on safeload's writer.

- :func:`valid_files` draws a :class:`FileCase`: tensors (random dtypes,
  shapes including 0-d and zero-size, deterministic contents), a layout
  (JSON order, data order and so alignments, metadata or none, padding,
  escaping) that together always make a valid file.
- :func:`corrupted_files` draws a valid file and applies one structured
  :class:`Corruption` to it; the result is usually, not always, invalid, so
  callers compare against a reference loader's verdict rather than assume one.

Corruptions whose verdict is implementation-defined (duplicate names, unknown
fields, non-space padding) are deliberately not generated: a random corruption
(a byte flip, a JSON syntax break) that happens to produce one is redrawn, see
:func:`implementation_defined`, which also tells callers why a given file's
verdict may legitimately differ between conforming loaders.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import struct
from collections.abc import Sequence

from hypothesis import strategies as st

from safeload.testing.writer import (
    DELETE,
    Layout,
    Raw,
    TensorSpec,
    build,
    dtype_names,
    element_quantum,
    tensor_bytes,
)


@dataclasses.dataclass(frozen=True)
class FileCase:
    tensors: tuple[TensorSpec, ...]
    layout: Layout
    label: str = "valid"
    data: bytes = b""  # the rendered file

    @property
    def valid(self) -> bool:
        return self.label == "valid"


class Corruption(enum.Enum):
    TRUNCATE = "truncate"            # cut bytes off the end of the file
    TRAILING = "trailing"            # append bytes after the data section
    HOLE = "hole"                    # unused bytes before a tensor
    OVERLAP = "overlap"              # move a tensor's range back into its predecessor
    REVERSE = "reverse"              # data_offsets [end, begin]
    SHAPE = "shape"                  # grow one dimension
    NEGATIVE_DIM = "negative_dim"    # a dimension below zero
    UNKNOWN_DTYPE = "unknown_dtype"  # dtype not in the format
    DTYPE_SWAP = "dtype_swap"        # another real dtype (sizes may or may not agree)
    DROP_FIELD = "drop_field"        # remove dtype, shape or data_offsets
    LENGTH_PREFIX = "length_prefix"  # length prefix off by some bytes
    HEADER_BYTE_FF = "header_byte_ff"  # a 0xFF byte (never UTF-8) inside the header
    HEADER_BYTE = "header_byte"      # one header byte replaced by printable ASCII
    METADATA_VALUE = "metadata_value"  # a non-string __metadata__ value
    HUGE_DIM = "huge_dim"            # one dimension near or past 2^32, 2^63, 2^64
    JSON_SYNTAX = "json_syntax"      # header JSON broken: a structural character dropped,
                                     # added or replaced, the text cut short or followed by more
    BYTE_FLIP = "byte_flip"          # 1 to 4 bits flipped anywhere in the file (prefix included)


_NAME_ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))
names = st.text(_NAME_ALPHABET, min_size=0, max_size=12).filter(lambda s: s != "__metadata__")
metadata_maps = st.dictionaries(st.text(_NAME_ALPHABET, max_size=8), st.text(_NAME_ALPHABET, max_size=16), max_size=4)


@st.composite
def shapes(draw, dtype: str, max_dims: int = 3, max_side: int = 5) -> tuple[int, ...]:
    """A shape whose element count is a whole number of bytes for ``dtype``:
    the last dimension is a multiple of the dtype's quantum (2 for F4, 4 for
    F6_*), so 0-d shapes only for byte-sized dtypes."""
    q = element_quantum(dtype)
    ndim = draw(st.integers(0 if q == 1 else 1, max_dims))
    dims = [draw(st.integers(0, max_side)) for _ in range(ndim)]
    if ndim and q > 1:
        dims[-1] = q * draw(st.integers(0, max(1, max_side // q)))
    return tuple(dims)


@st.composite
def tensor_specs(draw, dtypes: Sequence[str] | None = None, max_dims: int = 3) -> TensorSpec:
    dtype = draw(st.sampled_from(list(dtypes) if dtypes else dtype_names()))
    shape = draw(shapes(dtype, max_dims))
    seed = draw(st.integers(0, 2**32 - 1))
    return TensorSpec("", dtype, shape, tensor_bytes(seed.to_bytes(4, "little"), dtype, shape))


@st.composite
def valid_files(draw, dtypes: Sequence[str] | None = None, max_tensors: int = 6) -> FileCase:
    tensor_names = draw(st.lists(names, max_size=max_tensors, unique=True))
    tensors = tuple(dataclasses.replace(draw(tensor_specs(dtypes)), name=n) for n in tensor_names)
    layout = Layout(
        metadata=draw(st.none() | metadata_maps),
        metadata_position=draw(st.integers(0, len(tensors))),
        json_order=draw(st.permutations(tensor_names)),
        data_order=draw(st.permutations(tensor_names)),
        align=draw(st.sampled_from([1, 8, 64])),  # no padding, upstream's, and a wide one
        ensure_ascii=draw(st.booleans()),
    )
    return FileCase(tensors, layout, "valid", build(tensors, layout).data)


@st.composite
def corrupted_files(draw, dtypes: Sequence[str] | None = None, max_tensors: int = 6) -> FileCase:
    base = draw(valid_files(dtypes, max_tensors))
    kind = draw(st.sampled_from(list(Corruption)))
    tensors, layout = base.tensors, dataclasses.replace(base.layout)
    data = _corrupt(draw, kind, tensors, layout, list(dtypes) if dtypes else dtype_names())
    for _ in range(3):  # a random edit may land on an implementation-defined file: redraw
        if implementation_defined(data) is None:
            break
        data = _corrupt(draw, kind, tensors, layout, list(dtypes) if dtypes else dtype_names())
    else:
        kind = Corruption.TRUNCATE
        data = _corrupt(draw, kind, tensors, layout, list(dtypes) if dtypes else dtype_names())
    return FileCase(tensors, layout, kind.value, data)


def _corrupt(draw, kind: Corruption, tensors, layout: Layout, dtypes: list[str]) -> bytes:
    built = build(tensors, layout)
    pick = (lambda: draw(st.sampled_from(list(tensors)))) if tensors else None

    def rebuild(**changes) -> bytes:
        return build(tensors, dataclasses.replace(layout, **changes)).data

    if kind is Corruption.JSON_SYNTAX:
        return _break_json(draw, built)
    if kind is Corruption.BYTE_FLIP:
        out = bytearray(built.data)
        if not out:
            return b"\x01"
        for _ in range(draw(st.integers(1, 4))):
            # Half the flips land in the prefix or header, where they matter most.
            limit = built.data_start if draw(st.booleans()) else len(out)
            out[draw(st.integers(0, limit - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind is Corruption.TRUNCATE or (pick is None and kind not in (
            Corruption.TRAILING, Corruption.LENGTH_PREFIX, Corruption.HEADER_BYTE_FF,
            Corruption.HEADER_BYTE, Corruption.METADATA_VALUE)):
        cut = draw(st.integers(1, min(len(built.data), 24)))
        return built.data[:-cut]
    if kind is Corruption.TRAILING:
        return built.data + draw(st.binary(min_size=1, max_size=16))
    if kind is Corruption.LENGTH_PREFIX:
        delta = draw(st.integers(-16, 16).filter(bool))
        return rebuild(length_override=max(0, len(built.header) + delta))
    if kind is Corruption.HEADER_BYTE_FF or kind is Corruption.HEADER_BYTE:
        i = draw(st.integers(0, len(built.header) - 1))
        byte = 0xFF if kind is Corruption.HEADER_BYTE_FF else draw(st.integers(0x21, 0x7E))
        out = bytearray(built.data)
        out[8 + i] = byte
        return bytes(out)
    if kind is Corruption.METADATA_VALUE:
        value = draw(st.sampled_from([1, None, ["x"], {"k": "v"}, True]))
        return rebuild(metadata={**(layout.metadata or {}), "k": value})
    t = pick()
    begin, end = built.offsets[t.name]
    if kind is Corruption.HOLE:
        return rebuild(gaps={t.name: b"\0" * draw(st.integers(1, 8))})
    if kind is Corruption.OVERLAP:
        back = draw(st.integers(1, 8))
        return rebuild(offsets={t.name: [max(0, begin - back), max(0, end - back)]}, truncate=-back if built.data else None)
    if kind is Corruption.REVERSE:
        return rebuild(offsets={t.name: [end + 1, begin]})
    if kind is Corruption.SHAPE:
        shape = list(t.shape) or [1]
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] += element_quantum(t.dtype) if i == len(shape) - 1 else 1
        return rebuild(entry_overrides={t.name: {"shape": shape}})
    if kind is Corruption.NEGATIVE_DIM:
        shape = list(t.shape) or [1]
        shape[draw(st.integers(0, len(shape) - 1))] = -draw(st.integers(1, 4))
        return rebuild(entry_overrides={t.name: {"shape": shape}})
    if kind is Corruption.UNKNOWN_DTYPE:
        bogus = draw(st.sampled_from(["F128", "f32", "", "float32", "I4", "Q8_0"]))
        return rebuild(entry_overrides={t.name: {"dtype": bogus}})
    if kind is Corruption.DTYPE_SWAP:
        other = draw(st.sampled_from([d for d in dtypes if d != t.dtype] or dtypes))
        return rebuild(entry_overrides={t.name: {"dtype": other}})
    if kind is Corruption.DROP_FIELD:
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        return rebuild(entry_overrides={t.name: {field: DELETE}})
    if kind is Corruption.HUGE_DIM:
        shape = list(t.shape) or [1]
        huge = draw(st.sampled_from(_HUGE_DIMS))
        shape[draw(st.integers(0, len(shape) - 1))] = huge
        return rebuild(entry_overrides={t.name: {"shape": shape}})
    raise AssertionError(kind)


_HUGE_DIMS = [2**31, 2**32, 2**32 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]

# Edits that break JSON syntax, applied at a structural character of the header.
_STRUCTURAL = b'{}[]:,"'


def _break_json(draw, built) -> bytes:
    """The file with its header JSON broken one way, the length prefix kept
    consistent with the new header so the JSON is what fails."""
    header = built.header
    text_end = len(header.rstrip(b" "))
    positions = [i for i in range(text_end) if header[i] in _STRUCTURAL]
    how = draw(st.sampled_from(["drop", "double", "replace", "trailing_comma", "cut", "append"]))
    if how == "cut" or not positions:
        new = header[: draw(st.integers(0, max(0, text_end - 1)))]
    elif how == "append":
        new = header[:text_end] + draw(st.sampled_from([b"{}", b",", b"}", b"]", b"x", b"0", b'"', b"{"]))
    else:
        i = draw(st.sampled_from(positions))
        if how == "drop":
            new = header[:i] + header[i + 1:]
        elif how == "double":
            new = header[:i] + header[i:i + 1] + header[i:]
        elif how == "replace":
            other = draw(st.sampled_from([c for c in b'{}[]:,";= ' if c != header[i]]))
            new = header[:i] + bytes([other]) + header[i + 1:]
        else:  # a comma before a closing bracket, or before the end
            closes = [j for j in positions if header[j] in b"}]"] or [text_end]
            j = draw(st.sampled_from(closes))
            new = header[:j] + b"," + header[j:]
    return struct.pack("<Q", len(new)) + new + built.data[built.data_start:]


class _Object(dict):
    """A JSON object that remembers the keys it was given more than once."""

    def __init__(self, pairs):
        super().__init__(pairs)
        keys = [k for k, _ in pairs]
        self.duplicates = sorted({k for k in keys if keys.count(k) > 1})


def implementation_defined(data: bytes) -> str | None:
    """Why conforming loaders may disagree on accepting ``data``, or None.

    The cases are the ``i_*`` fixtures' (fixtures/README.md): a duplicate key
    (tensor name or entry field), an unknown field or an array
    in place of a tensor entry (upstream accepts, safeload rejects), a shape
    whose left-to-right product overflows although it has a zero, and a zero-
    size tensor with a dimension over 2^63-1 (torch sizes are signed 64-bit:
    safeload rejects it, upstream accepts). Dtypes a framework lacks (F6_*, F4
    with an odd last dimension in torch) are a loader's limit, not the file's,
    and are not reported here. A header that is not UTF-8 or not JSON is never
    implementation-defined.
    """
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        return None
    try:
        root = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_Object)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(root, dict):
        return None
    # A field given twice inside a tensor entry is not listed: upstream and
    # safeload both reject it (n_tensor_duplicate_field).
    if root.duplicates:
        return f"tensor name {root.duplicates[0]!r} given twice"
    for name, entry in root.items():
        if name == "__metadata__":
            continue
        if isinstance(entry, list):
            return f"tensor entry {name!r} is an array"
        if not isinstance(entry, dict):
            continue
        if set(entry) - {"dtype", "shape", "data_offsets"}:
            return f"tensor entry {name!r} has an unknown field"
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            continue
        if 0 in shape:
            if any(d > 2**63 - 1 for d in shape):
                return f"zero-size tensor {name!r} with a dimension over 2^63-1"
            product = 1
            for d in shape:
                product *= d
                if product >= 2**64:
                    return f"shape of {name!r} overflows 64 bits before its zero"
    return None


def files(dtypes: Sequence[str] | None = None, max_tensors: int = 6, corrupt_ratio: float = 0.6):
    """Valid files and corrupted ones, mixed."""
    weight = max(1, round(10 * corrupt_ratio))
    return st.one_of([valid_files(dtypes, max_tensors)] * max(1, 10 - weight)
                     + [corrupted_files(dtypes, max_tensors)] * weight)


__all__ = ["Corruption", "FileCase", "Raw", "corrupted_files", "files", "implementation_defined",
           "names", "shapes", "tensor_specs", "valid_files"]
