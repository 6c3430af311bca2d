"""The reference loader against upstream safetensors, the independent oracle."""
from __future__ import annotations

import json
import os

import pytest
import torch
import safetensors.torch as upstream

import safeload
import safeload.reference
from safeload.inspect import main as inspect_main

from helpers import MALFORMED, assert_same, write_raw

# Every torch dtype the format can carry, with the format's name for it.
TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "C64": torch.complex64, "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E8M0": torch.float8_e8m0fnu, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F4": torch.float4_e2m1fn_x2,
}
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (3, 5), (2, 3, 4)]


def random_tensor(dtype: torch.dtype, shape, seed: int) -> torch.Tensor:
    """Random bytes reinterpreted as `dtype` (every bit pattern, NaNs included)."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw = raw % 2  # torch bools must be 0 or 1
    return raw.view(dtype).reshape(shape)


def test_python_table_is_the_format():
    assert set(safeload.DTYPES) == set(TORCH_DTYPES) | {"F6_E2M3", "F6_E3M2"}


@pytest.mark.parametrize("fmt", sorted(TORCH_DTYPES))
def test_every_dtype_loads_bitwise_identical_to_upstream(tmp_path, fmt):
    dtype = TORCH_DTYPES[fmt]
    # A 0-d float4_e2m1fn_x2 holds two F4 values, which the format cannot
    # write as a 0-d F4 tensor (one 4-bit value): upstream refuses to save it.
    shapes = [s for s in SHAPES if s or fmt != "F4"]
    tensors = {f"t{i}": random_tensor(dtype, shape, seed=i) for i, shape in enumerate(shapes)}
    path = tmp_path / "f.safetensors"
    upstream.save_file(tensors, str(path))
    expected = upstream.load_file(str(path))
    assert_same(expected, tensors)  # the oracle agrees with what was written
    assert_same(safeload.reference.load_file(path), expected)
    assert_same(safeload.load_file(path), expected)
    for name, dt, *_ in safeload.read_header(path)["tensors"]:
        assert dt == fmt


def test_mixed_dtypes_and_metadata(tmp_path):
    tensors = {fmt: random_tensor(dt, (3, 4), seed=k) for k, (fmt, dt) in enumerate(TORCH_DTYPES.items())}
    path = tmp_path / "mixed.safetensors"
    upstream.save_file(tensors, str(path), metadata={"format": "pt", "ünïcode": "✓"})
    assert_same(safeload.reference.load_file(path), tensors)
    assert safeload.read_header(path)["metadata"] == {"format": "pt", "ünïcode": "✓"}


def test_device_argument_forms(tmp_path):
    path = tmp_path / "a.safetensors"
    upstream.save_file({"a": torch.arange(4)}, str(path))
    for device in ("cpu", torch.device("cpu")):
        assert safeload.reference.load_file(path, device)["a"].device.type == "cpu"
    with pytest.raises(safeload.SafetensorError) as e:
        safeload.reference.load_file(path, "warp-drive")
    assert e.value.code == "INVALID_ARGUMENT"
    if not torch.cuda.is_available():
        with pytest.raises(safeload.SafetensorError) as e:
            safeload.reference.load_file(path, "cuda")
        assert e.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("code", sorted(MALFORMED))
@pytest.mark.parametrize("loader", [safeload.reference.load_file, safeload.load_file], ids=["reference", "fast"])
def test_malformed_files_raise_their_code(tmp_path, code, loader):
    header, data = MALFORMED[code]
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(data)
    else:
        write_raw(path, header, data)
    with pytest.raises(safeload.SafetensorError) as e:
        loader(path)
    assert e.value.code == code
    assert isinstance(e.value, ValueError)
    assert str(path) in str(e.value) or code == "UNSUPPORTED_DTYPE" and "bad.safetensors" in str(e.value)


def test_every_error_code_is_exercised():
    # Not about one file's format: bad arguments and devices, missing files
    # (here), checkpoint indexes (test_checkpoint.py), allocation failure and
    # cancellation (test_robustness.py).
    non_format = {"INVALID_ARGUMENT", "IO", "INVALID_INDEX", "OUT_OF_MEMORY", "CANCELLED"}
    assert set(MALFORMED) | non_format == set(safeload.ERROR_CODES)


def test_io_errors_are_oserror_with_the_path(tmp_path):
    missing = tmp_path / "missing.safetensors"
    for loader in (safeload.reference.load_file, safeload.load_file, safeload.read_header):
        with pytest.raises(FileNotFoundError) as e:
            loader(missing)
        assert str(missing) in str(e.value)
    with pytest.raises(IsADirectoryError):
        safeload.load_file(tmp_path)


def test_inspect_prints_table_and_errors(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    upstream.save_file({"w": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(path), metadata={"k": "v"})
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "w" in out and "BF16" in out and "[2, 3]" in out and "k: v" in out
    assert inspect_main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"][0][0] == "w"
    bad = write_raw(tmp_path / "bad.safetensors", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"abcde")
    assert inspect_main([bad]) == 1
    assert "METADATA_INCOMPLETE_BUFFER" in capsys.readouterr().err
