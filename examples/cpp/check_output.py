"""Checks list_tensors' output against the fixture manifest: the tensor count,
then one line per tensor, in name order, with the manifest's shape.

    list_tensors FILE | python examples/cpp/check_output.py fixtures/manifest.json CASE
"""
import json
import sys


def main(manifest_path: str, case: str) -> int:
    tensors = json.load(open(manifest_path))["cases"][case]["tensors"]
    lines = sys.stdin.read().splitlines()
    expected_head = f"{len(tensors)} tensors"
    if not lines or not lines[0].endswith(expected_head):
        print(f"expected a first line ending in {expected_head!r}, got {lines[:1]}", file=sys.stderr)
        return 1
    got = [line.split("  ") for line in lines[1:]]
    want = [(name, "[" + ", ".join(map(str, t["shape"])) + "]") for name, t in sorted(tensors.items())]
    if [(g[0], g[-1]) for g in got] != want:
        print(f"expected (name, shape) {want}\ngot {got}", file=sys.stderr)
        return 1
    print(f"examples/cpp: {case}: {len(want)} tensors, names and shapes as in the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
