"""``safeload bench``: every loader and the hardware's limits, side by side, in one run."""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

_UNITS = {"b": 1, "k": 10**3, "kb": 10**3, "kib": 1 << 10, "m": 10**6, "mb": 10**6,
          "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12,
          "tib": 1 << 40}


#: Smallest file worth timing: below this a load takes about as long as
#: starting a process, a thread or a clock, so GB/s would measure those.
MIN_MEASURABLE_BYTES = 16 << 20


def parse_size(text: str) -> int:
    """A size with its unit (4GiB, 512MiB, 2GB). A bare number is refused:
    '--size 1' meaning one byte (or one GiB) is a guess either way."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        hint = " (a size needs a unit)" if m and not m.group(2) else ""
        raise argparse.ArgumentTypeError(f"not a size: {text!r}{hint}; examples: 4GiB, 512MiB, 2GB")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < MIN_MEASURABLE_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too small to measure: at least {MIN_MEASURABLE_BYTES >> 20} MiB, "
            "since a smaller load takes about as long as starting it")
    return size


def default_size() -> int:
    """4 GiB, or less where that would not fit comfortably: a warm run holds the file in the page
    cache and a copy in the loader's process, and the memcpy probe holds two more copies."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30
    return max(256 << 20, min(4 << 30, ram // 6 // (256 << 20) * (256 << 20)))


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("SAFELOAD_BENCH_DIR") or os.path.join(base, "safeload", "bench")


def collect_files(inputs: list[str]) -> list[str]:
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item) if n.endswith(".safetensors"))
            if not found:
                raise SystemExit(f"safeload bench: no .safetensors files in directory {item}")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise SystemExit(f"safeload bench: no such file or directory: {item}")
    return [os.path.abspath(f) for f in files]


class Progress:
    """A one-line progress bar on stderr, redrawn in place."""

    def __init__(self, enabled: bool, width: int = 28):
        self.enabled = enabled
        self.width = width
        self.start = time.monotonic()

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        elapsed = time.monotonic() - self.start
        eta = f" eta {elapsed / done * (total - done):4.0f}s" if 0 < done < total else ""
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}{eta} {label}"
        sys.stderr.write(line[:118].ljust(118))
        if done == total and label == "done":
            sys.stderr.write("\n")
        sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    from safeload.bench.runner import DEFAULT_IDLE_SECONDS, STATES

    p = argparse.ArgumentParser(
        prog="safeload bench",
        description="Time every installed safetensors loader against the storage and memory "
                    "limits of this machine, cold and warm, in one interleaved run.",
    )
    p.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR",
                   help="safetensors files or directories of them (default: a generated "
                        "model-shaped file, see --size)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="size of the generated file (Qwen3-8B layer shapes in bf16, scaled; "
                        f"default {default_size() / (1 << 30):g} GiB on this machine)")
    p.add_argument("--cache-dir", default=None,
                   help="where the generated file is written once and reused "
                        "(default $SAFELOAD_BENCH_DIR or ~/.cache/safeload/bench)")
    p.add_argument("--rounds", type=int, default=5, help="runs of each entry, interleaved (default 5)")
    p.add_argument("--device", action="append", default=None,
                   help="target device, repeatable (default: cpu plus cuda and mps where present)")
    p.add_argument("--condition", action="append", choices=("cold", "warm"), default=None,
                   help="page-cache condition, repeatable (default: cold and warm)")
    p.add_argument("--state", action="append", choices=tuple(STATES), default=None,
                   help="process state a warm load is timed in, repeatable (default: all): resident "
                        "(a fresh process), freed (one that just wrote and freed as many bytes as it "
                        "loads), idle (one idle --idle seconds); each with its own new-memory probe")
    p.add_argument("--idle", type=float, default=DEFAULT_IDLE_SECONDS,
                   help="seconds the idle state waits before its load (default %(default)g: a host that pages "
                        "out idle guest memory does so after about a minute)")
    p.add_argument("--loaders", default=None,
                   help="comma-separated loader keys to run (default: all; see --list)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for safeload fast and the limit probes (default: their own)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before one run is abandoned")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds each run waits before its clock starts, so memory freed by the "
                        "previous run or by the eviction is as idle as the rest (default 3; some "
                        "hypervisors reclaim idle guest memory after ~2 s, making new pages cost "
                        "more, and a run right after another would otherwise get cheaper memory)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write a bar chart (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--list", action="store_true", help="list the loaders and whether each can run, then exit")
    p.add_argument("--python", action="append", default=[], metavar="ENV=PYTHON",
                   help="the interpreter for loaders that need an environment of their own "
                        "(safetensors 0.9 beside another version here: st09=PATH/bin/python), repeatable")
    p.add_argument("--ranks", type=int, default=None, metavar="N",
                   help="multi-rank mode: N processes load the checkpoint with safeload.distributed "
                        "(each reads a share, then they exchange) against every rank reading everything; "
                        "storage bytes per rank and time to the last rank (gloo on cpu, NCCL on cuda)")
    p.add_argument("--safe-open", action="store_true",
                   help="safe_open callers instead: one tensor, a quarter of a matrix's rows or columns, "
                        "every tensor; bytes read from storage and time, against upstream's safe_open "
                        "(first file only)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from safeload.bench import loaders, model, report, runner

    devices = args.device or runner.available_devices()
    interpreters = {}
    for item in args.python:
        env, sep, python = item.partition("=")
        if not sep or not env or not python:
            print(f"safeload bench: --python takes ENV=PYTHON, got {item!r}", file=sys.stderr)
            return 2
        interpreters[env] = python
    if args.list:
        for loader in loaders.LOADERS:
            for device in devices:
                why = runner.loader_status(loader, device, interpreters)[0]
                print(f"{loader.key:26} {device:5} {'ok' if why is None else why}")
        return 0
    if args.rounds < 1:
        print("safeload bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    keys = None
    if args.loaders:
        keys = [k.strip() for k in args.loaders.split(",") if k.strip()]
        unknown = [k for k in keys if k not in loaders.BY_KEY]
        if unknown:
            print(f"safeload bench: unknown loader(s) {', '.join(unknown)}; "
                  f"known: {', '.join(loaders.BY_KEY)}", file=sys.stderr)
            return 2
    if args.plot and report.plot_unavailable():
        print(f"safeload bench: cannot write --plot: {report.plot_unavailable()}", file=sys.stderr)
        return 2

    progress_on = not args.no_progress and sys.stderr.isatty()
    if args.inputs:
        paths = collect_files(args.inputs)
        total = sum(os.path.getsize(p) for p in paths)
        if total < MIN_MEASURABLE_BYTES:
            print(f"safeload bench: {total:,} bytes is too small to measure (at least "
                  f"{MIN_MEASURABLE_BYTES >> 20} MiB: a smaller load takes about as long as starting it)",
                  file=sys.stderr)
            return 2
    else:
        size = args.size or default_size()
        directory = args.cache_dir or default_cache_dir()
        target = os.path.join(directory, model.file_name(size))
        if not os.path.exists(target):
            print(f"safeload bench: writing {target} (once; reused by later runs)", file=sys.stderr)
        bar = Progress(progress_on)
        written = model.ensure_file(size, directory,
                                    progress=lambda d, t: bar(d >> 20, t >> 20, "MiB written"))
        paths = [os.path.abspath(written)]
        if progress_on:
            sys.stderr.write("\r" + " " * 118 + "\r")

    if args.safe_open:
        from safeload.bench import partial

        return partial.main(paths[0], conditions=args.condition or list(runner.CONDITIONS), rounds=args.rounds,
                            settle=args.settle, timeout=args.timeout, interpreters=interpreters,
                            json_out=args.json, on_run=Progress(progress_on))

    if args.ranks is not None:
        if args.ranks < 1:
            print("safeload bench: --ranks must be at least 1", file=sys.stderr)
            return 2
        from safeload.bench import distributed

        return distributed.main(paths, args.ranks, device=(args.device or ["cpu"])[0],
                                conditions=args.condition or list(runner.CONDITIONS), rounds=args.rounds,
                                timeout=args.timeout, json_out=args.json)

    doc = runner.run(
        paths,
        devices=devices,
        conditions=args.condition or list(runner.CONDITIONS),
        rounds=args.rounds,
        loader_keys=keys,
        threads=args.threads,
        timeout=args.timeout,
        settle=args.settle,
        on_run=Progress(progress_on),
        interpreters=interpreters,
        states=args.state or list(runner.STATES),
        idle=args.idle,
    )
    print(report.table(doc))
    if args.json:
        report.write_json(doc, args.json)
        print(f"\nJSON: {args.json}")
    if args.plot:
        report.plot(doc, args.plot)
        print(f"chart: {args.plot}")
    # A peer that fails is reported in the table; the exit status is about this project's loaders
    # and about wrong bytes from anyone.
    bad = [r for b in doc["results"] for r in b["rows"]
           if r["status"].startswith("WRONG")
           or (r["key"].startswith("safeload") and r["status"].startswith("failed"))]
    return 1 if bad else 0
