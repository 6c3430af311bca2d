"""Checks list_tensors' output against the fixture manifest: the tensor count,
then one line per tensor, in file order (the header's data offsets, read here
from the case's file), with the manifest's shape.

    list_tensors FILE | python examples/cpp/check_output.py fixtures/manifest.json CASE
"""
import json
import os
import struct
import sys


def file_order(path: str) -> list:
    """Tensor names by their data offsets, from the file's header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: (header[name]["data_offsets"], name))


def main(manifest_path: str, case: str) -> int:
    tensors = json.load(open(manifest_path))["cases"][case]["tensors"]
    lines = sys.stdin.read().splitlines()
    expected_head = f"{len(tensors)} tensors"
    if not lines or not lines[0].endswith(expected_head):
        print(f"expected a first line ending in {expected_head!r}, got {lines[:1]}", file=sys.stderr)
        return 1
    got = [line.split("  ") for line in lines[1:]]
    path = os.path.join(os.path.dirname(manifest_path), "corpus", case + ".safetensors")
    want = [(name, "[" + ", ".join(map(str, tensors[name]["shape"])) + "]") for name in file_order(path)]
    if [(g[0], g[-1]) for g in got] != want:
        print(f"expected (name, shape) {want}\ngot {got}", file=sys.stderr)
        return 1
    print(f"examples/cpp: {case}: {len(want)} tensors, names and shapes as in the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
