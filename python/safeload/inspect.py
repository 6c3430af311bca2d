"""``safeload inspect FILE``: print a file's validated header as a table."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Iterator

import safeload

_COLUMNS = ("name", "dtype", "shape", "offsets", "bytes")
_BATCH = 4096  # rows per write: few system calls, and nothing large held


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _cells(tensor) -> tuple[str, str, str, str, str]:
    name, dtype, shape, begin, end = tensor
    return name, dtype, "[" + ", ".join(map(str, shape)) + "]", f"[{begin}, {end}]", str(end - begin)


def _table_lines(path: str, header: dict) -> Iterator[str]:
    """The table, line by line. Column widths take one pass over the tensors
    that keeps nothing; the rows are then made and handed out one at a time,
    so a header of a million tensors is never held twice as text."""
    tensors = header["tensors"]
    widths = [len(c) for c in _COLUMNS]
    for t in tensors:
        for i, cell in enumerate(_cells(t)):
            if len(cell) > widths[i]:
                widths[i] = len(cell)

    def row(cells) -> str:
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    yield (f"{path}: {len(tensors)} tensors, {_human(header['data_length'])} of data, "
           f"header {header['header_length']} bytes (data starts at byte {header['data_start']})")
    yield row(_COLUMNS)
    yield "  ".join("-" * w for w in widths)
    for t in tensors:
        yield row(_cells(t))
    if header["metadata"] is None:
        yield "metadata: none"
    else:
        yield "metadata:"
        for k, v in sorted(header["metadata"].items()):
            yield f"  {k}: {v}"


def _json_lines(header: dict) -> Iterator[str]:
    """read_header's dict as JSON, one tensor per line, the keys in its order."""
    yield "{"
    keys = list(header)
    for ki, key in enumerate(keys):
        comma = "," if ki + 1 < len(keys) else ""
        if key != "tensors":
            yield f" {json.dumps(key)}: {json.dumps(header[key])}{comma}"
            continue
        tensors = header[key]
        if not tensors:
            yield f' "tensors": []{comma}'
            continue
        yield ' "tensors": ['
        last = len(tensors) - 1
        for i, t in enumerate(tensors):
            yield "  " + json.dumps(list(t)) + ("," if i < last else "")
        yield f" ]{comma}"
    yield "}"


def format_header(path: str, header: dict) -> str:
    """The whole table as one string (for callers that want it as a value)."""
    return "\n".join(_table_lines(path, header))


def _write(lines: Iterator[str], out: IO[str]) -> None:
    batch = []
    for line in lines:
        batch.append(line)
        if len(batch) == _BATCH:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
    out.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="safeload inspect", description=__doc__)
    parser.add_argument("file")
    parser.add_argument("--json", action="store_true", help="print the header as JSON")
    args = parser.parse_args(argv)
    try:
        header = safeload.read_header(args.file)
    except safeload.SafetensorError as e:
        print(f"{args.file}: invalid ({e.code}): {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{args.file}: cannot read: {e}", file=sys.stderr)
        return 1
    try:
        _write(_json_lines(header) if args.json else _table_lines(args.file, header), sys.stdout)
    except BrokenPipeError:
        # The reader went away (`safeload inspect big.safetensors | head`):
        # stop quietly; point stdout at /dev/null so exiting does not fail
        # again flushing it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
