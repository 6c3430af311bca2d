"""Cases generated at run time, never committed: files too large for the
corpus, written into the run's temporary directory from the run's seed.

- ``chunks``: about 72 MiB, tensors of tens of MiB at odd offsets, laid out
  so that every multiple of 1, 2, 4, 8, 16, 32 and 64 MiB, counted from the
  start of the file and from the start of the data, falls strictly inside a
  tensor: a loader that mishandles any chunk boundary returns wrong bytes.
- ``medium``: 8 MiB in four tensors, the file the leak and concurrency checks
  load over and over.
- ``over_4gib`` (opt-in, ``--large``): a U8 tensor over 4 GiB and a second
  tensor starting past 4 GiB, for 32-bit size and offset bugs. Every 1 MiB
  block is stamped with its index, so a wrapped offset reads the wrong block.
- ``slices``: a tensor of every dtype in shapes to slice, for ``get_slice``
  (see :mod:`safeload.conformance.surfaces`).

To look at one outside a run (a failure's reproducer names them)::

    python -m safeload.conformance.generated --seed 0 --out DIR

Each file is described to the judge by what the writer was given: names,
dtypes, shapes, and the SHA-256 of each tensor's bytes.
"""
from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

from safeload.conformance.cases import ACCEPT, Case, ExpectedTensor

MiB = 1 << 20
CHUNK_SIZES = tuple(k * MiB for k in (1, 2, 4, 8, 16, 32, 64))
_ELEM = {"U8": 1, "I8": 1, "BF16": 2, "F16": 2, "I16": 2, "F32": 4, "I32": 4, "F64": 8, "I64": 8}


def _blocks(rng, nbytes: int, stamp_base: int | None = None, block: int = MiB) -> Iterator[bytes]:
    """``nbytes`` pseudo-random bytes in blocks; with ``stamp_base``, one
    random block reused with its running index stamped into its first 8
    bytes (cheap for gigabytes, still position-dependent)."""
    if stamp_base is None:
        left = nbytes
        while left:
            n = min(block, left)
            yield rng.bytes(n)
            left -= n
        return
    base = bytearray(rng.bytes(block))
    for i, start in enumerate(range(0, nbytes, block)):
        n = min(block, nbytes - start)
        base[:8] = struct.pack("<Q", stamp_base + i)
        yield bytes(base[:n])


def _write(path: Path, specs: list[tuple[str, str, list[int], int]], rng, header_pad: int,
           stamp: bool = False) -> dict[str, ExpectedTensor]:
    """Write a safetensors file streaming its data; returns the expectation.
    ``header_pad`` spaces pad the header, so the data may start at an odd
    offset. Tensors are written back to back in the order given."""
    header: dict[str, object] = {"__metadata__": {"generator": "safeload conformance"}}
    offset = 0
    for name, dtype, shape, nbytes in specs:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode() + b" " * header_pad
    expected = {}
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for i, (name, dtype, shape, nbytes) in enumerate(specs):
            h = hashlib.sha256()
            for b in _blocks(rng, nbytes, stamp_base=(i << 40) if stamp else None):
                h.update(b)
                f.write(b)
            expected[name] = ExpectedTensor(dtype, tuple(shape), h.hexdigest(), nbytes)
    return expected


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def _boundaries_inside(starts: list[int], total: int) -> bool:
    """True if no multiple of a chunk size below ``total`` is a tensor start."""
    edges = set(starts)
    return not any(m in edges for c in CHUNK_SIZES for m in range(c, total, c))


def chunk_case(seed: int, directory: Path) -> Case:
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    dtypes = ["U8", "F32", "BF16", "U8", "F16", "I64", "U8", "F32"]
    for _attempt in range(100):
        pad = int(rng.integers(1, 8))
        specs = [("a_head", "U8", [3], 3)]
        # Sizes of tens of MiB with odd remainders; the last tensor runs past 64 MiB.
        sizes_mib = [int(x) for x in rng.integers(3, 20, size=len(dtypes))]
        while sum(sizes_mib) < 70:
            sizes_mib[-1] += 8
        for i, (dtype, mib) in enumerate(zip(dtypes, sizes_mib)):
            el = _ELEM[dtype]
            numel = (mib * MiB + int(rng.integers(1, 4096))) // el
            rows = 7 if numel % 7 == 0 else 1
            shape = [rows, numel // rows] if rows > 1 else [numel]
            specs.append((f"t{i}_{dtype.lower()}_{mib}mib", dtype, shape, numel * el))
        starts, off = [], 0
        for _, _, _, n in specs:
            starts.append(off)
            off += n
        json_len = len(json.dumps(_header_for(specs), separators=(",", ":")).encode())
        pad += (8 + json_len + pad + 1) % 2  # the data starts at an odd offset
        header_len = 8 + json_len + pad
        if _boundaries_inside(starts, off) and _boundaries_inside([s + header_len for s in starts], off + header_len):
            break
    name = f"g{seed}_chunks_{off // MiB}MiB"
    path = directory / f"{name}.safetensors"
    tensors = _write(path, specs, rng, pad)
    return Case(name, str(path), ACCEPT, "generated: tensors across every common chunk boundary, at odd offsets",
                _file_sha(path), tensors, origin="generated")


def _header_for(specs: list[tuple[str, str, list[int], int]]) -> dict[str, object]:
    header: dict[str, object] = {"__metadata__": {"generator": "safeload conformance"}}
    offset = 0
    for name, dtype, shape, nbytes in specs:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    return header


def medium_case(seed: int, directory: Path) -> Case:
    import numpy as np

    rng = np.random.default_rng([seed, 2])
    specs = [("embed", "BF16", [1024, 1024], 2 * MiB), ("proj", "F32", [512, 1024], 2 * MiB),
             ("bias", "F32", [1021], 4084), ("w", "U8", [4 * MiB - 4084], 4 * MiB - 4084)]
    name = f"g{seed}_medium_8MiB"
    path = directory / f"{name}.safetensors"
    tensors = _write(path, specs, rng, 5)
    return Case(name, str(path), ACCEPT, "generated: 8 MiB, for the leak and concurrency checks",
                _file_sha(path), tensors, origin="generated")


def over_4gib_case(seed: int, directory: Path) -> Case:
    import numpy as np

    rng = np.random.default_rng([seed, 3])
    big = (4 << 30) + 3 * MiB + 4097  # over 2^32 bytes, not a whole number of blocks
    specs = [("a_small", "U8", [5], 5), ("b_big", "U8", [big], big), ("c_after_4gib", "F32", [3, 1000], 12000)]
    name = f"g{seed}_over_4GiB"
    path = directory / f"{name}.safetensors"
    tensors = _write(path, specs, rng, 3, stamp=True)
    return Case(name, str(path), ACCEPT, "generated (--large): a tensor over 4 GiB and a tensor past 4 GiB",
                _file_sha(path), tensors, origin="generated")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from safeload.conformance.surfaces import slices_case

    p = argparse.ArgumentParser(prog="python -m safeload.conformance.generated",
                                description="Write the run-time cases of a seed (all but --large) into a directory.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for case in (medium_case(args.seed, out), chunk_case(args.seed, out), slices_case(args.seed, out)[0]):
        print(case.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
