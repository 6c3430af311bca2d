"""Hypothesis strategies for safetensors files, built on safeload's writer.

- :func:`valid_files` draws a :class:`FileCase`: tensors (random dtypes,
  shapes including 0-d and zero-size, deterministic contents), a layout
  (JSON order, data order and so alignments, metadata or none, padding,
  escaping) that together always make a valid file.
- :func:`corrupted_files` draws a valid file and applies one structured
  :class:`Corruption` to it; the result is usually, not always, invalid, so
  callers compare against a reference loader's verdict rather than assume one.

Corruptions whose verdict is implementation-defined (duplicate names, unknown
fields, non-space padding) are deliberately not generated.
"""
from __future__ import annotations

import dataclasses
import enum
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
        align=draw(st.sampled_from([1, 8])),
        ensure_ascii=draw(st.booleans()),
    )
    return FileCase(tensors, layout, "valid", build(tensors, layout).data)


@st.composite
def corrupted_files(draw, dtypes: Sequence[str] | None = None, max_tensors: int = 6) -> FileCase:
    base = draw(valid_files(dtypes, max_tensors))
    kind = draw(st.sampled_from(list(Corruption)))
    tensors, layout = base.tensors, dataclasses.replace(base.layout)
    data = _corrupt(draw, kind, tensors, layout, list(dtypes) if dtypes else dtype_names())
    return FileCase(tensors, layout, kind.value, data)


def _corrupt(draw, kind: Corruption, tensors, layout: Layout, dtypes: list[str]) -> bytes:
    built = build(tensors, layout)
    pick = (lambda: draw(st.sampled_from(list(tensors)))) if tensors else None

    def rebuild(**changes) -> bytes:
        return build(tensors, dataclasses.replace(layout, **changes)).data

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
    raise AssertionError(kind)


def files(dtypes: Sequence[str] | None = None, max_tensors: int = 6, corrupt_ratio: float = 0.6):
    """Valid files and corrupted ones, mixed."""
    weight = max(1, round(10 * corrupt_ratio))
    return st.one_of([valid_files(dtypes, max_tensors)] * max(1, 10 - weight)
                     + [corrupted_files(dtypes, max_tensors)] * weight)


__all__ = ["Corruption", "FileCase", "Raw", "corrupted_files", "files", "names", "shapes",
           "tensor_specs", "valid_files"]
