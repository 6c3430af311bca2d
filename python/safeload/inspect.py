"""``safeload inspect FILE``: print a file's validated header as a table."""
from __future__ import annotations

import argparse
import json
import sys

import safeload


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_header(path: str, header: dict) -> str:
    rows = [("name", "dtype", "shape", "offsets", "bytes")]
    for name, dtype, shape, begin, end in header["tensors"]:
        rows.append((name, dtype, "[" + ", ".join(map(str, shape)) + "]", f"[{begin}, {end}]", str(end - begin)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{path}: {len(header['tensors'])} tensors, {_human(header['data_length'])} of data, "
             f"header {header['header_length']} bytes (data starts at byte {header['data_start']})"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if j < 4 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if header["metadata"] is None:
        lines.append("metadata: none")
    else:
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in sorted(header["metadata"].items())]
    return "\n".join(lines)


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
    print(json.dumps(header, indent=1) if args.json else format_header(args.file, header))
    return 0
