"""One measured run, in a fresh process: ``python -m safeload.bench.worker SPEC_JSON``.

A fresh process per run makes the peak resident memory belong to that run alone and gives
every run the same allocator and page-table state. On Linux the peak is the kernel's VmHWM,
reset to the current RSS (``/proc/self/clear_refs``) just before the clock starts, so it is the
peak during the timed region; elsewhere it is ``ru_maxrss`` over the process's life. Imports, CUDA context
creation and the cold-cache eviction happen before the clock starts; the result is one JSON
object on the last line of stdout.

SPEC fields: kind ("loader", "storage", "memory", "fresh", "h2d", or "check": whether a loader
can run here), key (loader key), paths,
device, condition ("cold" or "warm"), state (the process state, ``runner.STATES``: "freed"
writes and frees nbytes of new memory just before the clock), threads (or null), nbytes (for
the limit probes and the "freed" state), settle (seconds to wait after the eviction and before
the clock, so that memory the previous run or the eviction freed is as idle as the rest of the
machine's when the clock starts; the idle state's idle time), gate (then wait for a line on
stdin after the settle: the runner's turn signal).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux 4.0+: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    # VmHWM belongs to this program's address space. ru_maxrss does not: Linux carries the
    # parent's high-water mark into a forked child across exec, so a parent that once mapped the
    # whole file would make every worker look as large as the file.
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def _current_rss_bytes() -> int:
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else _peak_rss_bytes()


def _sync(device: str) -> None:
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def _prepare_device(device: str) -> None:
    import torch

    kind = torch.device(device).type
    if kind == "cpu":
        return
    # Create the context and the caching allocator's first block outside the clock.
    torch.ones(1, device=device).sum().item()
    _sync(device)
    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def run(spec: dict) -> dict:
    from safeload.bench import cache, limits

    kind, device, paths = spec["kind"], spec.get("device", "cpu"), spec.get("paths", [])
    threads = spec.get("threads")
    result: dict = {}

    if kind == "check":  # can this loader run here, and with which packages?
        from safeload.bench.loaders import BY_KEY
        from safeload.bench.runner import package_versions

        return {"unavailable": BY_KEY[spec["key"]].unavailable(device), "packages": package_versions()}
    if kind == "loader":
        import torch

        from safeload.bench.loaders import BY_KEY, touch

        loader = BY_KEY[spec["key"]]
        reason = loader.unavailable(device)
        if reason:
            return {"error": reason}
        _prepare_device(device)
    elif kind == "h2d":
        _prepare_device(device)

    if spec.get("condition") == "cold":
        for p in paths:
            cache.evict(p)
    result["waiting_since"] = time.time()
    if spec.get("settle"):
        time.sleep(spec["settle"])
    if spec.get("gate"):  # started with others (the idle state): wait for this run's turn
        sys.stdin.readline()
    if spec.get("state") == "freed":  # the state: as many bytes as the load, just written and freed
        limits.fresh_memory(spec["nbytes"], threads, methods=limits.EVERY_CORE)
    resident = [cache.resident_fraction(p) for p in paths]
    result["resident_before"] = None if None in resident or not resident else min(resident)
    rss_before = _current_rss_bytes()
    result["peak_reset"] = _reset_peak_rss()
    result["clock_started_at"] = time.time()  # wall time, so runs can be shown not to overlap

    if kind == "loader":
        t0 = time.perf_counter()
        tensors = loader.load(paths, device, threads)
        _sync(device)
        t1 = time.perf_counter()
        checksum = touch(tensors)
        t2 = time.perf_counter()
        result.update(
            seconds=t2 - t0,
            seconds_load=t1 - t0,
            seconds_touch=t2 - t1,
            nbytes=sum(t.numel() * t.element_size() for t in tensors.values()),
            ntensors=len(tensors),
            checksum=f"{checksum:016x}",
        )
        if torch.device(device).type == "cuda":
            result["device_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    elif kind == "storage":
        seconds, nbytes, tried = limits.storage_limit(paths, threads)
        result.update(seconds=seconds, nbytes=nbytes, configs=tried)
    elif kind == "memory":
        result.update(seconds=limits.memcpy(spec["nbytes"], threads), nbytes=spec["nbytes"])
    elif kind == "fresh":
        # In the resident state every way of obtaining memory is tried, the fastest counts; in
        # the others, the first write from every core, once, so that it meets the state itself.
        resident = spec.get("state", "resident") == "resident"
        seconds, tried = limits.fresh_memory(spec["nbytes"], threads, (spec.get("settle") or 0.0) if resident else 0.0,
                                             rotate=spec.get("round", 0),
                                             methods=None if resident else limits.EVERY_CORE)
        result.update(seconds=seconds, nbytes=spec["nbytes"], methods=tried)
    elif kind == "h2d":
        result.update(seconds=limits.h2d(spec["nbytes"], device), nbytes=spec["nbytes"])
    else:
        raise ValueError(f"unknown run kind {kind!r}")

    result["clock_stopped_at"] = time.time()
    result["rss_before_bytes"] = rss_before
    result["rss_peak_bytes"] = _peak_rss_bytes()
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        result = run(spec)
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    sys.stdout.flush()
    # The result line goes straight to fd 1, after anything a loader printed.
    os.write(1, ("\n" + json.dumps(result) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
