"""``safeload inspect SOURCE...``: what a file or a whole checkpoint holds, validated, with no
tensor data read.

SOURCE is what ``safeload.load_checkpoint`` takes: one ``.safetensors`` file (its header as a
table), or a checkpoint: a directory (its ``*.safetensors.index.json``, or every
``.safetensors`` file in it; a Hugging Face cache snapshot's symbolic links are followed), an
index, or several files. For a checkpoint it prints a summary (shards, tensors, bytes, dtypes,
metadata, and the verdict ``load_checkpoint`` would give: every shard's header and the index
checked against the shards, with the same checks and codes), then each shard's tensors.
``--summary`` prints the summary alone, ``-k GLOB`` lists only the tensors whose name matches,
``--json`` gives the same as JSON. Exit status: 0 when everything is valid, 1 when a file or the
checkpoint is not (each invalid shard is named with its code), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from typing import IO, Iterator, Optional, Sequence

import safeload
from safeload import _C, _loading

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


def _matching(tensors: list, patterns: Sequence[str]) -> list:
    if not patterns:
        return tensors
    return [t for t in tensors if any(fnmatch.fnmatchcase(t[0], p) for p in patterns)]


def _table_lines(path: str, header: dict, patterns: Sequence[str] = ()) -> Iterator[str]:
    """The table, line by line. Column widths take one pass over the tensors
    that keeps nothing; the rows are then made and handed out one at a time,
    so a header of a million tensors is never held twice as text."""
    tensors = _matching(header["tensors"], patterns)
    widths = [len(c) for c in _COLUMNS]
    for t in tensors:
        for i, cell in enumerate(_cells(t)):
            if len(cell) > widths[i]:
                widths[i] = len(cell)

    def row(cells) -> str:
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    shown = "" if not patterns else f" ({len(tensors)} matching {', '.join(patterns)})"
    yield (f"{path}: {len(header['tensors'])} tensors{shown}, {_human(header['data_length'])} of data, "
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


# --- a checkpoint ------------------------------------------------------------------------------


def inspect_checkpoint(sources: Sequence[str]) -> dict:
    """What ``load_checkpoint(sources)`` would see, without reading tensor data: the shards as
    it resolves them, each shard's validated header or its error, and the verdict of the same
    validation ``load_checkpoint`` runs first (every header, and the index against them).
    Raises SafetensorError/OSError when the source itself cannot be resolved (no such
    directory, an unreadable or malformed index)."""
    src = list(sources) if len(sources) > 1 else sources[0]
    files, one = _loading._sources(src)
    index = ""
    if one:
        resolved, index_bytes = _C.resolve_checkpoint(one)
        files, index = resolved, os.fsdecode(index_bytes)
    shards = []
    for f in files:
        entry: dict = {"path": os.fsdecode(f)}
        try:
            entry["header"] = _C.read_header(f)
            entry["valid"] = True
        except safeload.SafetensorError as e:
            entry.update(valid=False, code=e.code, message=str(e))
        except OSError as e:
            entry.update(valid=False, code="IO", message=str(e))
        shards.append(entry)
    try:
        _C.Checkpoint([] if one else files, one)
        verdict = {"valid": True}
    except safeload.SafetensorError as e:
        verdict = {"valid": False, "code": e.code, "message": str(e)}
    except OSError as e:
        verdict = {"valid": False, "code": "IO", "message": str(e)}
    index_metadata = None
    if index:
        try:
            with open(index, encoding="utf-8") as fh:
                meta = json.load(fh).get("metadata")
            index_metadata = meta if isinstance(meta, dict) else None
        except (OSError, ValueError, AttributeError):
            pass  # the verdict says what is wrong with the index
    dtypes: dict = {}
    metadata = []
    for shard in shards:
        header = shard.get("header")
        if header is None:
            continue
        for _, dtype, _, begin, end in header["tensors"]:
            d = dtypes.setdefault(dtype, {"tensors": 0, "bytes": 0})
            d["tensors"] += 1
            d["bytes"] += end - begin
        metadata.append(header["metadata"])
    valid = verdict["valid"] and all(s["valid"] for s in shards)
    return {
        "source": [os.fsdecode(s) for s in sources] if len(sources) > 1 else os.fsdecode(sources[0]),
        "index": index or None,
        "valid": valid,
        "verdict": verdict,
        "summary": {
            "shards": len(shards),
            "invalid_shards": sum(1 for s in shards if not s["valid"]),
            "tensors": sum(len(s["header"]["tensors"]) for s in shards if s["valid"]),
            "data_bytes": sum(s["header"]["data_length"] for s in shards if s["valid"]),
            "file_bytes": sum(s["header"]["file_size"] for s in shards if s["valid"]),
            "dtypes": dict(sorted(dtypes.items())),
            # One map when every valid shard has the same, else one per valid shard.
            "metadata": metadata[0] if metadata and all(m == metadata[0] for m in metadata) else metadata,
            "index_metadata": index_metadata,
        },
        "shards": shards,
    }


def _verdict_line(report: dict) -> str:
    v = report["verdict"]
    if report["valid"]:
        what = "every shard's header is valid" + (" and the index agrees with the shards" if report["index"] else "")
        return f"verdict: valid: {what}"
    if v["valid"]:  # cannot be: load_checkpoint checks every shard; kept for clarity
        return "verdict: invalid shards"
    return f"verdict: INVALID ({v['code']}): {v['message']}"


def _metadata_text(meta) -> str:
    if meta is None:
        return "none"
    if isinstance(meta, list):
        return "differs between shards: " + "; ".join(_metadata_text(m) for m in meta)
    return ", ".join(f"{k}={v}" for k, v in sorted(meta.items())) or "{} (empty)"


def _summary_lines(report: dict) -> Iterator[str]:
    s = report["summary"]
    source = report["source"] if isinstance(report["source"], str) else " ".join(report["source"])
    where = f", index {report['index']}" if report["index"] else ""
    bad = f" ({s['invalid_shards']} invalid)" if s["invalid_shards"] else ""
    yield f"{source}: checkpoint of {s['shards']} shard{'s' if s['shards'] != 1 else ''}{bad}{where}"
    yield (f"  {s['tensors']} tensors, {_human(s['data_bytes'])} of data in {_human(s['file_bytes'])} of files"
           + (" (valid shards only)" if s["invalid_shards"] else ""))
    if s["dtypes"]:
        yield "  dtypes: " + ", ".join(f"{d} {v['tensors']} tensors {_human(v['bytes'])}" for d, v in s["dtypes"].items())
    yield f"  metadata: {_metadata_text(s['metadata'])}"
    if report["index"]:
        yield f"  index metadata: {_metadata_text(s['index_metadata'])}"
    yield "  " + _verdict_line(report)
    yield "shards:"
    width = max(len(os.path.basename(x["path"])) for x in report["shards"])
    for shard in report["shards"]:
        name = os.path.basename(shard["path"]).ljust(width)
        if shard["valid"]:
            h = shard["header"]
            n = len(h["tensors"])
            yield f"  {name}  {n:>6} tensor{'s' if n != 1 else ' '}  {_human(h['data_length']):>10}  valid"
        else:
            yield f"  {name}  INVALID ({shard['code']}): {shard['message']}"


def _checkpoint_lines(report: dict, patterns: Sequence[str], summary_only: bool) -> Iterator[str]:
    yield from _summary_lines(report)
    if summary_only:
        return
    for shard in report["shards"]:
        if shard["valid"] and (not patterns or _matching(shard["header"]["tensors"], patterns)):
            yield ""
            yield from _table_lines(shard["path"], shard["header"], patterns)


def _checkpoint_json(report: dict, patterns: Sequence[str], summary_only: bool) -> Iterator[str]:
    out = dict(report)
    shards = []
    for shard in report["shards"]:
        entry = {k: v for k, v in shard.items() if k != "header"}
        if "header" in shard:
            header = {k: v for k, v in shard["header"].items() if k != "tensors"}
            if not summary_only:
                header["tensors"] = [list(t) for t in _matching(shard["header"]["tensors"], patterns)]
            entry["header"] = header
        shards.append(entry)
    out["shards"] = shards
    yield json.dumps(out, indent=1, ensure_ascii=False)


def _is_one_file(sources: Sequence[str]) -> bool:
    return len(sources) == 1 and not os.path.isdir(sources[0]) and not os.fsdecode(sources[0]).endswith(".json")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="safeload inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="+", help="a .safetensors file, a checkpoint directory, an index, or several files")
    parser.add_argument("--json", action="store_true", help="print the same as JSON")
    parser.add_argument("--summary", action="store_true", help="a checkpoint's summary alone, without the tensors")
    parser.add_argument("-k", dest="patterns", action="append", default=[], metavar="GLOB",
                        help="list only the tensors whose name matches (repeatable)")
    args = parser.parse_args(argv)
    label = " ".join(args.source)
    try:
        if _is_one_file(args.source) and not args.summary:
            header = safeload.read_header(args.source[0])
            if args.patterns:
                header = dict(header, tensors=_matching(header["tensors"], args.patterns))
            lines = _json_lines(header) if args.json else _table_lines(args.source[0], header)
            ok = True
        else:
            report = inspect_checkpoint(args.source)
            lines = (_checkpoint_json(report, args.patterns, args.summary) if args.json
                     else _checkpoint_lines(report, args.patterns, args.summary))
            ok = report["valid"]
    except safeload.SafetensorError as e:
        print(f"{label}: invalid ({e.code}): {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{label}: cannot read: {e}", file=sys.stderr)
        return 1
    try:
        _write(lines, sys.stdout)
    except BrokenPipeError:
        # The reader went away (`safeload inspect big.safetensors | head`):
        # stop quietly; point stdout at /dev/null so exiting does not fail
        # again flushing it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0 if ok else 1
