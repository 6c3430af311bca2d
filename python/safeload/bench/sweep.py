"""How the fast loader's defaults were chosen: one file loaded with every combination of
reader threads and chunk size (and prefaulting on and off), cold and warm, interleaved, a
fresh process per run.

    python -m safeload.bench.sweep [--size 2GiB] [--rounds 3] [--threads 1,2,4,8]
                                   [--chunks 4MiB,8MiB,64MiB] [--condition warm ...]

Each run loads with ``safeload.load_file(path, threads=T, chunk_bytes=C, prefault=P)`` and
touches every byte, as ``safeload bench`` does (same eviction, warming and settling), and
records what the load reported. ``auto`` is the loader's own choice for this machine and file.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time


def _run(spec: dict) -> dict:
    """In this (fresh) process: one load as ``spec`` says; seconds and the load's report."""
    import safeload
    from safeload.bench import cache
    from safeload.bench.loaders import touch

    if spec["condition"] == "cold":
        cache.evict(spec["path"])
    time.sleep(spec["settle"])
    report: dict = {}
    t0 = time.perf_counter()
    tensors = safeload.load_file(spec["path"], threads=spec["threads"], chunk_bytes=spec["chunk"],
                                 prefault=spec["prefault"], report=report)
    touch(tensors)
    return {"seconds": time.perf_counter() - t0, "report": report}


def _label(threads, chunk, prefault) -> str:
    t = "auto" if threads is None else str(threads)
    c = "auto" if chunk is None else f"{chunk >> 20}MiB"
    return f"threads {t:>4}, chunk {c:>6}, prefault {'on' if prefault else 'off'}"


def main(argv: list[str] | None = None) -> int:
    from safeload.bench.cli import default_cache_dir, parse_size

    p = argparse.ArgumentParser(prog="python -m safeload.bench.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("2GiB"))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", default="auto,1,2,4,8", help="comma-separated; auto: the loader's choice")
    p.add_argument("--chunks", default="auto,8MiB,64MiB", help="comma-separated sizes; auto: the loader's choice")
    p.add_argument("--prefault", default="on,off")
    p.add_argument("--condition", action="append", choices=("warm", "cold"))
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--json")
    p.add_argument("--_run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._run:
        print(json.dumps(_run(json.loads(args._run))))
        return 0

    from safeload.bench import cache, model

    path = str(model.ensure_file(args.size, args.cache_dir or default_cache_dir()))
    threads = [None if t == "auto" else int(t) for t in args.threads.split(",")]
    chunks = [None if c == "auto" else parse_size(c) for c in args.chunks.split(",")]
    prefaults = [v == "on" for v in args.prefault.split(",")]
    configs = list(itertools.product(threads, chunks, prefaults))
    runs: dict = {}
    for condition in args.condition or ["warm", "cold"]:
        for _ in range(args.rounds):
            for t, c, pf in configs:
                if condition == "warm":
                    cache.warm(path)
                spec = {"path": path, "condition": condition, "threads": t, "chunk": c, "prefault": pf,
                        "settle": args.settle}
                out = subprocess.run([sys.executable, "-m", "safeload.bench.sweep", "--_run", json.dumps(spec)],
                                     capture_output=True, text=True, check=True)
                runs.setdefault(condition, {}).setdefault(_label(t, c, pf), []).append(
                    json.loads(out.stdout.strip().splitlines()[-1]))
    size = os.path.getsize(path)
    print(f"{os.path.basename(path)}, {size / 2**30:.2f} GiB, {os.cpu_count()} cores, "
          f"{args.rounds} interleaved rounds, GB/s median (min-max)")
    for condition, by_label in runs.items():
        print(f"\npage cache {condition}")
        for label, rs in by_label.items():
            gbps = [size / r["seconds"] / 1e9 for r in rs]
            chosen = rs[0]["report"]
            print(f"  {label}  {statistics.median(gbps):5.2f} ({min(gbps):.2f}-{max(gbps):.2f})"
                  f"   [ran: {chosen['threads']} threads, {chosen['chunk_bytes'] >> 20} MiB chunks"
                  f"{', bypassing the page cache' if chosen['bypass'] else ''}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"file": os.path.basename(path), "bytes": size, "cores": os.cpu_count(),
                       "rounds": args.rounds, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
