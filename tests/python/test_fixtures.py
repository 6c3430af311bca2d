"""The fixture corpus: reproducible, small, complete, and agreeing with
upstream safetensors and with safeload's loaders on every verdict.

Expectations come from fixtures/manifest.json, which the generator derives
from what its writer was given (never from a loader)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import safeload
import safeload.reference
from helpers import raw_bytes
from safeload.testing.writer import (
    DELETE,
    Layout,
    Raw,
    TensorSpec,
    build,
    deterministic_bytes,
    dtype_bits,
    dtype_names,
    element_quantum,
    encode_json,
    nbytes_of,
    tensor_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))["cases"]
# Errors that are not about one file's format: a device, an argument, I/O, a
# checkpoint index, memory, cancellation (each tested where it arises).
NOT_FORMAT_ERRORS = {"UNSUPPORTED_DTYPE", "INVALID_ARGUMENT", "IO", "INVALID_INDEX", "OUT_OF_MEMORY", "CANCELLED"}


def _generator():
    spec = importlib.util.spec_from_file_location("fixtures_generate", FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module




def cases(prefix: str) -> list[str]:
    return sorted(n for n in MANIFEST if n.startswith(prefix))


# --- the corpus itself -------------------------------------------------------


def test_regenerating_the_corpus_is_byte_identical():
    assert _generator().check(FIXTURES) == []


def test_check_detects_a_changed_file(tmp_path):
    gen = _generator()
    gen.write(tmp_path)
    assert gen.check(tmp_path) == []
    victim = tmp_path / "corpus" / "y_dtype_F32.safetensors"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    (tmp_path / "corpus" / "y_stray.safetensors").write_bytes(b"")
    assert gen.check(tmp_path) == ["unexpected: corpus/y_stray.safetensors", "differs: corpus/y_dtype_F32.safetensors"]


def test_corpus_is_small():
    total = sum(p.stat().st_size for p in (FIXTURES / "corpus").iterdir()) + (FIXTURES / "manifest.json").stat().st_size
    assert total < 5 * 1024 * 1024


def test_manifest_describes_each_file():
    files = {p.name for p in (FIXTURES / "corpus").iterdir()}
    assert files == {Path(e["file"]).name for e in MANIFEST.values()}
    for name, e in MANIFEST.items():
        data = (FIXTURES / e["file"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (e["size"], e["sha256"]), name
        assert e["expect"] == {"y": "accept", "n": "reject", "i": "implementation-defined"}[name[0]]
        assert e["why"]


def test_every_format_error_code_has_a_case():
    covered = {e.get("error") for e in MANIFEST.values()} | {e.get("safeload") for e in MANIFEST.values()}
    missing = set(safeload.ERROR_CODES) - NOT_FORMAT_ERRORS - covered
    assert not missing
    n_codes = {e["error"] for n, e in MANIFEST.items() if n.startswith("n_")}
    assert n_codes <= set(safeload.ERROR_CODES)


def test_every_dtype_is_covered():
    loaded = {t["dtype"] for n in cases("y_") for t in MANIFEST[n]["tensors"].values()}
    defined = {t["dtype"] for n in cases("i_") for t in (MANIFEST[n].get("tensors") or {}).values()}
    assert set(dtype_names()) <= loaded | defined
    assert {d for d in dtype_names() if element_quantum(d) != 4} <= loaded


def test_readme_explains_every_case():
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for name in MANIFEST:
        assert f"| `{name}` |" in readme


# --- upstream agrees with every verdict --------------------------------------


@pytest.mark.parametrize("name", cases("y_") + cases("n_") + cases("i_"))
def test_upstream_safetensors_agrees(name):
    from safetensors.torch import load_file

    e = MANIFEST[name]
    try:
        out = load_file(str(FIXTURES / e["file"]))
    except Exception:
        out = None
    if name.startswith("n_"):
        assert out is None, "upstream accepts a file the corpus calls invalid"
    elif name.startswith("i_"):
        assert ("accept" if out is not None else "reject") == e["upstream"]
    else:
        assert out is not None, "upstream rejects a file the corpus calls valid"
        assert set(out) == set(e["tensors"])
        for k, t in e["tensors"].items():
            assert hashlib.sha256(raw_bytes(out[k])).hexdigest() == t["sha256"], k


# --- safeload's loaders: verdicts and error codes ----------------------------


@pytest.mark.parametrize("load", [safeload.reference.load_file, safeload.load_file], ids=["reference", "fast"])
def test_safeload_matches_the_manifest(load):
    for name, e in MANIFEST.items():
        path = str(FIXTURES / e["file"])
        want = e.get("error") or (e.get("safeload") if e.get("safeload") != "accept" else None)
        if name.startswith("y_") or (name.startswith("i_") and e["safeload"] == "accept"):
            out = load(path)
            assert set(out) == set(e["tensors"]), name
            for k, t in e["tensors"].items():
                assert hashlib.sha256(raw_bytes(out[k])).hexdigest() == t["sha256"], (name, k)
        else:
            with pytest.raises(safeload.SafetensorError) as info:
                load(path)
            assert info.value.code == want, name


# --- the writer --------------------------------------------------------------


def test_writer_default_layout_is_upstreams():
    from safetensors.torch import load, save

    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2, 3], dtype=torch.int16)}
    specs = [TensorSpec(k, {"a": "F32", "b": "I16"}[k], tuple(v.shape), raw_bytes(v)) for k, v in tensors.items()]
    ours = build(specs, Layout(metadata={"format": "pt"})).data
    loaded = load(ours)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    # Same bytes as upstream's writer for the same content (it sorts tensors by dtype size, then name).
    assert ours == save(tensors, metadata={"format": "pt"})


def test_writer_layout_controls():
    a, b = TensorSpec.random("a", "F32", (2,)), TensorSpec.random("b", "U8", (3,))
    built = build([a, b], Layout(data_order=["b", "a"], json_order=["b", "a"], align=1))
    header = built.data[8 : built.data_start]
    assert struct.unpack("<Q", built.data[:8])[0] == len(header)
    assert json.loads(header) == {"b": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                                  "a": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]}}
    assert list(json.loads(header)) == ["b", "a"]
    assert built.data[built.data_start :] == b.data + a.data

    padded = build([a], Layout(align=8))
    assert padded.data_start % 8 == 0 and padded.header.endswith(b" ")

    weird = build([a, b], Layout(gaps={"b": b"\xaa" * 4}, offsets={"a": [9, 1]},
                                entry_overrides={"b": {"dtype": DELETE, "x": Raw("1.0")}},
                                extra_entries=[("a", 5)], metadata={"k": "v"}, metadata_position=1,
                                length_override=3, trailing=b"T", truncate=-1))
    text = weird.header.decode()
    assert text.startswith('{"a":{"dtype":"F32","shape":[2],"data_offsets":[9,1]},"__metadata__":{"k":"v"},')
    assert '"b":{"shape":[3],"data_offsets":[12,15],"x":1.0},"a":5}' in text
    assert weird.data[:8] == (3).to_bytes(8, "little")
    assert weird.data.endswith(b.data)  # trailing b"T" added, then cut off again
    assert build([a], Layout(header_override=b"[]")).data == (2).to_bytes(8, "little") + b"[]" + a.data

    with pytest.raises(ValueError):
        build([a, a])
    with pytest.raises(ValueError):
        build([a], Layout(gaps={"zz": b""}))


def test_writer_json_escapes():
    assert encode_json({"é\"\\\n\x01": [1, True, None]}) == '{"é\\"\\\\\\n\\u0001":[1,true,null]}'
    assert encode_json("é🙂", ensure_ascii=True) == '"\\u00e9\\ud83d\\ude42"'
    assert json.loads(encode_json("é🙂", ensure_ascii=True)) == "é🙂"
    with pytest.raises(ValueError):
        encode_json(float("nan"))


def test_writer_sizes_and_contents():
    assert [dtype_bits(d) for d in ("BOOL", "F4", "F6_E2M3", "C64")] == [8, 4, 6, 64]
    assert nbytes_of("F4", (2, 4)) == 4 and nbytes_of("F6_E3M2", (4,)) == 3 and nbytes_of("F64", ()) == 8
    with pytest.raises(ValueError):
        nbytes_of("F4", (3,))
    assert deterministic_bytes("x", 40) == deterministic_bytes("x", 40)[:40]
    assert deterministic_bytes("x", 40)[:32] == hashlib.sha256(b"x" + bytes(8)).digest()
    assert set(tensor_bytes("s", "BOOL", (64,))) == {0, 1}


def test_the_harness_format_table_agrees_with_the_cpp_core():
    """The writer and the harness state the format themselves (safeload.testing.format), so
    they run without the compiled core and a fault in it cannot hide from them; this is where
    the two statements meet."""
    from safeload import _C
    from safeload.testing import format

    assert list(format.DTYPE_BITS.items()) == [(name, bits) for name, bits in _C.dtype_table()]
    constants = _C.constants()
    assert format.MAX_HEADER_LENGTH == constants["max_header_length"]
    assert format.MAX_JSON_DEPTH == constants["max_json_depth"]
