"""Runs loads inside a process started with the fault shim preloaded.

Started by ``harness.run_cases``: reads a JSON list of cases on stdin, runs
each (arming the shim around the load only), and writes one ``RESULT <json>``
line per case on stdout. ``START <id>`` goes to stderr first, so a crash or a
hang names its case. A case is a dict:

  id           unique name
  op           "load" (safeload.load_file), "reference" (safeload.reference.load_file),
               "read_header", "concurrent" (see run_concurrent)
  path         the file (str)
  kwargs       options for safeload.load_file
  copy_from    copied to ``path`` before every run (files a fault truncates)
  replacement  [src, dst]: ``src`` copied to ``dst`` before every run (REPLACE renames dst)
  evict        drop the file from the page cache before every run
  fault        {kind, fns, nth, count, filter, arg, file} or null
  repeat       runs (default 1); the result is the last run's, with counts of all
               and, when more than one, fds, threads and RSS before and after
  warmup       runs without the fault before the fd / RSS / thread counts are
               taken (default 0)

A "concurrent" case runs ``jobs`` (cases without faults) on ``threads``
threads for ``rounds`` rounds each under the case's fault, while another
thread evicts the files in ``evict`` from the page cache.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import sys
import threading
import time
import traceback

import torch

import safeload
import safeload.reference
from harness import digest
from safeload.bench.cache import evict

KINDS = {"none": 0, "eio": 1, "eintr": 2, "short": 3, "eof": 4, "eagain": 5, "delay": 6,
         "truncate": 7, "replace": 8, "unlink": 9}
FNS = {"read": 1, "pread": 2, "preadv": 4, "open": 8, "pthread_create": 16}

_shim = ctypes.CDLL(None)
for _name in ("fault_calls", "fault_fired", "fault_fired_direct"):
    getattr(_shim, _name).restype = ctypes.c_long
_shim.fault_arm.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_long, ctypes.c_long]
_shim.fault_set_filter.argtypes = [ctypes.c_char_p]
_shim.fault_set_arg.argtypes = [ctypes.c_longlong, ctypes.c_char_p]
try:
    _trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _trim = None


def arm(fault: dict | None) -> None:
    if not fault:
        return
    _shim.fault_set_filter(os.fsencode(fault.get("filter", "")))
    _shim.fault_set_arg(int(fault.get("arg", 0)), os.fsencode(fault.get("file", "")))
    mask = 0
    for fn in fault["fns"]:
        mask |= FNS[fn]
    _shim.fault_arm(KINDS[fault["kind"]], mask, int(fault.get("nth", 1)), int(fault.get("count", 1)))


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def counts(threads_expected: int | None = None) -> dict:
    """fds, threads and RSS: without ``threads_expected`` once the thread count
    is steady (a baseline); with it, after waiting up to
    two seconds for threads that are still exiting to be gone (a joined
    Python thread's OS thread may outlive the join by a moment)."""
    if threads_expected is None:
        # A baseline: a thread joined just before can stay listed in
        # /proc/self/task for a moment, so sample once the count is steady.
        last, deadline = thread_count(), time.monotonic() + 2
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = thread_count()
            if now == last:
                break
            last = now
    else:
        deadline = time.monotonic() + 2
        while thread_count() > threads_expected and time.monotonic() < deadline:
            time.sleep(0.01)
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": thread_count(), "rss": rss()}


def rss() -> int:
    gc.collect()
    if _trim is not None:
        _trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0




def call(case: dict):
    op, path = case["op"], case["path"]
    if op == "load":
        return safeload.load_file(path, case.get("device", "cpu"), **case.get("kwargs", {}))
    if op == "reference":
        return safeload.reference.load_file(path, case.get("device", "cpu"))
    if op == "read_header":
        return safeload.read_header(path)
    raise ValueError(f"unknown op {op}")


def describe_error(e: BaseException) -> dict:
    return {
        "outcome": "error",
        "exc": type(e).__name__,
        "mro": [c.__name__ for c in type(e).__mro__],
        "errno": getattr(e, "errno", None) if isinstance(e, OSError) else None,
        "code": getattr(e, "code", None),
        "message": str(e),
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:],
    }


def run_once(case: dict) -> dict:
    if case.get("copy_from"):
        shutil.copyfile(case["copy_from"], case["path"])
    if case.get("replacement"):
        shutil.copyfile(*case["replacement"])
    if case.get("evict"):
        evict(case["path"])
    arm(case.get("fault"))
    try:
        value = call(case)
    except Exception as e:  # everything is reported; the test decides
        _shim.fault_disarm()
        out = describe_error(e)
    else:
        _shim.fault_disarm()
        out = {"outcome": "ok", **digest(value)}
        del value
    out.update(calls=_shim.fault_calls(), fired=_shim.fault_fired(),
               fired_direct=_shim.fault_fired_direct())
    return out


def run_case(case: dict) -> dict:
    for _ in range(int(case.get("warmup", 0))):  # without the fault: first-use setup is not the load's
        run_once({k: v for k, v in case.items() if k != "fault"})
    measure = int(case.get("repeat", 1)) > 1  # gc.collect() costs a quarter second with torch loaded
    before = counts() if measure else None
    outcomes: dict = {}
    fired = 0
    out = {}
    for _ in range(int(case.get("repeat", 1))):
        out = run_once(case)
        key = out["outcome"] if out["outcome"] == "ok" else f"{out['exc']}:{out['errno']}:{out['code']}"
        outcomes[key] = outcomes.get(key, 0) + 1
        fired += out["fired"]
    after = counts(before["threads"]) if measure else None
    out.update(before=before, after=after, outcomes=outcomes, fired_total=fired)
    return out


def run_concurrent(case: dict) -> dict:
    """``case["jobs"]``: sub-cases (no fault of their own) run by
    ``case["threads"]`` threads, each job ``case["rounds"]`` times, while the
    case's fault (filtered to the bad files) is armed for all of them."""
    jobs, results, lock = case["jobs"], [], threading.Lock()
    for job in jobs:  # once each, alone: whatever a first load sets up for good is counted before
        try:
            call(job)
        except Exception:
            pass
    before = counts()
    arm(case.get("fault"))

    def work(index: int) -> None:
        for r in range(int(case.get("rounds", 1))):
            job = jobs[(index + r) % len(jobs)]
            try:
                value = call(job)
            except Exception as e:
                res = describe_error(e)
                res.pop("traceback")
            else:
                res = {"outcome": "ok", **digest(value)}
                del value
            with lock:
                results.append({"job": job["id"], **res})

    stop = threading.Event()

    def evict_loop() -> None:  # a process evicting the page cache beside the loads
        while not stop.wait(0.005):
            for path in case.get("evict", []):
                evict(path)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(int(case["threads"]))]
    evictor = threading.Thread(target=evict_loop)
    evictor.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    evictor.join()
    _shim.fault_disarm()
    del threads, evictor
    return {"outcome": "done", "results": results, "before": before, "after": counts(before["threads"])}


def main() -> int:
    cases = json.load(sys.stdin)
    for case in cases:
        print(f"START {case['id']}", file=sys.stderr, flush=True)
        out = run_concurrent(case) if case["op"] == "concurrent" else run_case(case)
        out["id"] = case["id"]
        print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
