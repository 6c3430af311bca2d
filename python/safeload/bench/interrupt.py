"""How soon Ctrl-C stops a load: the time from SIGINT to ``KeyboardInterrupt``.

    python -m safeload.bench.interrupt [--size 1GiB] [--tries 8] [--threads 1] [--io cached]
                                       [--after 0.3] [--json OUT]

A sparse file of ``--size`` bytes (one U8 tensor; it costs no disk and reads as zeros, so the
page cache serves it) is loaded over and over by a fresh child process; ``--after`` seconds
after the child says it is loading, SIGINT is sent, and the child notes when
``KeyboardInterrupt`` reached it (CLOCK_MONOTONIC, shared by every process of the machine).
Each try also records how many bytes the interrupted load had read (its report), and whether
its descriptors and threads were back to where they were. Median, min and max per setting.

The tests check that an interrupted load stops short and leaves nothing behind; the latency
is a figure of this machine and its load, measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import safeload
path, kw = sys.argv[1], json.loads(sys.argv[2])
def counts():
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": len(os.listdir("/proc/self/task"))}
safeload.load_file(path, **kw)  # first-use setup is not the load's
before = counts()
print("STARTED", flush=True)
report = {}
try:
    while True:
        report = {}
        safeload.load_file(path, report=report, **kw)
except KeyboardInterrupt:
    caught = time.monotonic()
deadline = time.monotonic() + 2
while counts()["threads"] > before["threads"] and time.monotonic() < deadline:
    time.sleep(0.01)
print("JSON " + json.dumps({"caught": caught, "done": report.get("bytes_done"), "total": report.get("bytes_total"),
                            "clean": counts() == before}))
"""


def sparse_file(path: str, n: int) -> str:
    header = json.dumps({"big": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + n)
    return path


def one_try(path: str, options: dict, after_s: float, timeout: float = 120) -> dict:
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path, json.dumps(options)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        if proc.stdout.readline().strip() != "STARTED":
            raise RuntimeError(f"the child did not start: {proc.communicate(timeout=timeout)[1][-2000:]}")
        time.sleep(after_s)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the child failed (status {proc.returncode}): {err[-2000:]}")
    got = json.loads(lines[-1][5:])
    got["latency_s"] = got.pop("caught") - sent
    return got


def main(argv: list[str] | None = None) -> int:
    from safeload.bench.cli import parse_size

    p = argparse.ArgumentParser(prog="python -m safeload.bench.interrupt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    p.add_argument("--tries", type=int, default=8)
    p.add_argument("--threads", default="1,auto", help="comma-separated reader threads; auto: the loader's choice")
    p.add_argument("--io", default="cached", choices=("auto", "cached", "uncached"))
    p.add_argument("--after", type=float, default=0.3, help="seconds between the child's start and SIGINT")
    p.add_argument("--json", help="write every try here")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="safeload-interrupt-") as tmp:
        path = sparse_file(os.path.join(tmp, "sparse.safetensors"), args.size)
        settings = [{"io": args.io, **({} if t == "auto" else {"threads": int(t)})}
                    for t in args.threads.split(",")]
        runs: list[list[dict]] = [[] for _ in settings]
        for _ in range(args.tries):  # settings interleaved, try by try
            for i, options in enumerate(settings):
                runs[i].append(one_try(path, options, args.after))
    print(f"SIGINT to KeyboardInterrupt, {args.size / 2**30:.2f} GiB sparse file, {args.tries} tries, "
          f"SIGINT {args.after:g} s after start; median s (min-max)")
    for options, tries in zip(settings, runs):
        lat = [t["latency_s"] for t in tries]
        short = sum(1 for t in tries if t["done"] is not None and t["done"] < t["total"])
        clean = sum(1 for t in tries if t["clean"])
        print(f"  {json.dumps(options):<34} {statistics.median(lat):.3f} ({min(lat):.3f}-{max(lat):.3f})   "
              f"stopped short {short}/{len(tries)}, descriptors and threads back {clean}/{len(tries)}")
        results.append({"options": options, "tries": tries})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"size": args.size, "after_s": args.after, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
