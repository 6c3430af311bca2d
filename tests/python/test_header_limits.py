"""Header parsing against upstream safetensors where the header is unusual or
huge: a __metadata__ key given twice, a million tensors, a 99 MB metadata
string.

The memory tests build their files at run time in a temporary directory and
measure each reader in a fresh Python process: peak resident memory (VmHWM)
over what the process held just before the call, after every import. They
compare safeload with upstream measured the same way in the same run, never
with a number written down here.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import safetensors
import torch
from safetensors.torch import load_file as upstream_load_file

import safeload
import safeload.reference
from safeload.inspect import main as inspect_main

MIB = 1024 * 1024
# Headroom on top of upstream: 10%, and a fixed allowance for what differs
# between two fresh interpreters (allocator arenas, lazily loaded modules).
RATIO, SLACK_MIB = 1.1, 32


def write_raw(path, header: bytes, data: bytes = b"") -> str:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)
    return str(path)


# --- item 8: a __metadata__ key given twice ----------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b'{"__metadata__":{"k":"1","k":"2"}}',
        b'{"__metadata__":{"k":"1","j":"x","k":"2","k":"3"},"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}',
        # \u006b is "k": the same key, spelled differently.
        b'{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"__metadata__":{"k":"first","\\u006b":"second"}}',
        b'{"__metadata__":{"k":"","k":"\xc3\xa9","a":"1","a":"1"}}',
    ],
    ids=["twice", "three-times-with-a-tensor", "escaped-spelling", "non-ascii"],
)
def test_duplicate_metadata_key_accepted_like_upstream(tmp_path, header):
    has_tensor = b'"t"' in header
    path = write_raw(tmp_path / "dup.safetensors", header, b"ab" if has_tensor else b"")

    with safetensors.safe_open(path, framework="pt") as f:
        theirs = f.metadata()
    ours = safeload.read_header(path)["metadata"]
    assert ours == theirs  # the value written last, like upstream

    want = upstream_load_file(path)
    for load in (safeload.load_file, safeload.reference.load_file):
        got = load(path)
        assert set(got) == set(want)
        for name in want:
            assert torch.equal(got[name], want[name])


def test_repeated_key_still_needs_string_values(tmp_path):
    # Upstream checks each value as it reads it, so a non-string value is an
    # error even when a later value for the same key would replace it.
    path = write_raw(tmp_path / "dup.safetensors", b'{"__metadata__":{"k":1,"k":"2"}}')
    with pytest.raises(Exception):
        safetensors.safe_open(path, framework="pt")
    with pytest.raises(safeload.SafetensorError) as e:
        safeload.read_header(path)
    assert e.value.code == "INVALID_METADATA"


# --- item 9: the cost of large valid headers ---------------------------------

# Runs in a fresh interpreter: imports first, then resets the peak to the
# current resident size, calls the reader once, and reports the growth.
_PROBE = textwrap.dedent(
    """
    import json, sys
    import torch, safetensors, safeload

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        before = status("VmRSS")
    except OSError:
        before = status("VmHWM")
    which, path = sys.argv[1], sys.argv[2]
    if which == "safeload":
        header = safeload.read_header(path)
        count = len(header["tensors"])
        metadata = sum(len(v) for v in (header["metadata"] or {}).values())
    else:
        with safetensors.safe_open(path, framework="pt") as f:
            count = len(f.keys())
            metadata = sum(len(v) for v in (f.metadata() or {}).values()) if which == "upstream+metadata" else None
    print(json.dumps({"growth": status("VmHWM") - before, "count": count, "metadata": metadata}))
    """
)


def peak_growth(which: str, path: str) -> dict:
    # The child imports the same safeload as this process (in place or installed).
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(safeload.__file__)))
    out = subprocess.run([sys.executable, "-c", _PROBE, which, path], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_within_upstream(ours: dict, theirs: dict) -> None:
    limit = theirs["growth"] * RATIO + SLACK_MIB * MIB
    assert ours["growth"] <= limit, (
        f"safeload grew by {ours['growth'] / MIB:.0f} MiB, upstream by {theirs['growth'] / MIB:.0f} MiB "
        f"(limit {limit / MIB:.0f} MiB)")


def write_many_tensors(path, n: int) -> str:
    # n one-byte U8 tensors, "t0".."t{n-1}", in data order: a 68 MB header for n = 10^6.
    entries = ",".join(f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(n))
    return write_raw(path, ("{" + entries + "}").encode(), b"\x5a" * n)


def test_million_tensor_header_memory(tmp_path):
    n = 1_000_000
    path = write_many_tensors(tmp_path / "million.safetensors", n)
    theirs = peak_growth("upstream", path)
    ours = peak_growth("safeload", path)
    assert theirs["count"] == ours["count"] == n
    assert_within_upstream(ours, theirs)


def test_99mb_metadata_string_memory(tmp_path):
    # One metadata value fills a header at the 100 MB limit.
    head, tail = b'{"__metadata__":{"k":"', b'"}}'
    size = 99_000_000
    path = write_raw(tmp_path / "metadata.safetensors", head + b"x" * (size - len(head) - len(tail)) + tail)
    # Upstream's cheapest look at the file (it never makes the string a
    # Python object); safeload.read_header returns the string as well.
    theirs = peak_growth("upstream", path)
    ours = peak_growth("safeload", path)
    assert ours["metadata"] == size - len(head) - len(tail)
    assert_within_upstream(ours, theirs)


def test_inspect_streams_a_large_table_and_valid_json(tmp_path, capsys):
    # Every row printed, in data order, columns aligned; --json parses back to
    # read_header's dict.
    n = 20_000
    path = write_many_tensors(tmp_path / "many.safetensors", n)
    assert inspect_main([path]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith(f"{path}: {n} tensors")
    assert table[1].split() == ["name", "dtype", "shape", "offsets", "bytes"]
    rows = table[3:3 + n]
    assert [r.split()[0] for r in rows] == [f"t{i}" for i in range(n)]
    assert rows[-1].split() == [f"t{n - 1}", "U8", "[1]", f"[{n - 1},", f"{n}]", "1"]
    assert table[3 + n:] == ["metadata: none"]
    assert len({len(r) for r in table[1:3 + n]}) == 1

    assert inspect_main([path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(safeload.read_header(path)))


def test_inspect_json_of_an_empty_header_with_metadata(tmp_path, capsys):
    path = write_raw(tmp_path / "m.safetensors", b'{"__metadata__":{"k":"v\\u00e9"}}')
    assert inspect_main([path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == safeload.read_header(path)
