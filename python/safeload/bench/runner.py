"""The schedule of runs and the statistics over them.

For each device and condition, every runnable entry (loaders, then that condition's limits)
runs once per round, in the same order, round after round: A B C A B C ... so that slow drift
of the machine (other load, thermal state, a storage device's burst budget) spreads over all
entries instead of landing on whichever ran last. Every run is a fresh worker process.

Cold runs evict the files inside the worker, just before its clock starts. Warm runs find the
files resident: the runner reads them through the page cache whenever ``mincore`` says they are
not fully resident. Each run records the resident fraction it found.

A warm load's cost is mostly the new memory it writes, and what new memory costs depends on
what the process did just before (on a virtual machine whose host takes back freed and idle
guest memory, by a factor of several). So warm runs are timed in the process states users
have (``STATES``), each against a new-memory probe taken in the same state, in the same run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

from safeload.bench import cache, limits, report
from safeload.bench.loaders import BY_KEY, LOADERS, file_checksum

CONDITIONS = ("cold", "warm")
#: The process states a warm load is timed in: what the worker does before its clock starts.
STATES = {
    "resident": "a fresh process, its files resident",
    "freed": "a process that has just written and freed as many bytes as it loads",
    "idle": "a process idle for {idle:g} s before its load",
}
#: Beyond "resident", the states time safeload's loaders and upstream's pread backend (the
#: rows the targets compare) unless the caller names loaders: a state costs a run per entry.
STATE_LOADERS = ("safeload-fast", "safeload-reference", "safetensors-pread")
DEFAULT_IDLE_SECONDS = 60.0
LIMIT_LABELS = {
    "storage": "storage limit: parallel O_DIRECT read",
    "memory": "memory limit: parallel memcpy",
    "fresh": "new-memory limit: first write",
    "h2d": "H2D limit: pinned host-to-device copy",
}


@dataclasses.dataclass
class Entry:
    kind: str  # "loader" or a limit kind
    key: str
    label: str
    unavailable: str | None = None
    runs: list[dict] = dataclasses.field(default_factory=list)
    python: str | None = None  # the interpreter its workers run with (None: this one)

    @property
    def is_limit(self) -> bool:
        return self.kind != "loader"


def _make_resident(paths: list[str]) -> None:
    for p in paths:
        if (cache.resident_fraction(p) or 0.0) < 1.0:
            cache.warm(p)


def limits_for(device: str, condition: str, state: str = "resident") -> list[str]:
    """The limits a (device, condition, state) block is measured against: beyond the resident
    state, new memory only (what the state changes)."""
    if state != "resident":
        return ["fresh"] if device == "cpu" else []
    kinds = ["storage" if condition == "cold" else "memory"]
    if device == "cpu":
        kinds.append("fresh")  # CPU loaders return new host memory; device memory is not probed
    if device.startswith("cuda"):
        kinds.append("h2d")
    return kinds


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _worker_env() -> dict:
    env = dict(os.environ)
    # Workers import this package the way this process did, wherever it was found.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def run_child(args: list[str], timeout: float | None = None, python: str | None = None,
              what: str = "worker", env: dict | None = None) -> dict:
    """Run ``python args...`` (this interpreter by default) in this package's environment, with
    ``env`` added to it; return the JSON object its last output line holds, or {"error": why}
    when it has none."""
    return finish_child(start_child(args, python, env), timeout, what)


def start_child(args: list[str], python: str | None = None, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([python or sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**_worker_env(), **(env or {})})


def finish_child(proc: subprocess.Popen, timeout: float | None = None, what: str = "worker") -> dict:
    """Let ``proc`` go (a line on its stdin, which a gated worker waits for), wait for it, and
    return the JSON object its last output line holds, or {"error": why}."""
    try:
        out, err = proc.communicate("go\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    except BaseException:  # Ctrl-C: no worker outlives the benchmark
        proc.kill()
        proc.wait()
        raise
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = (err or out).strip().splitlines()[-3:]
        return {"error": f"{what} exited with status {proc.returncode}: {' | '.join(tail)}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"{what} printed no result: {lines[-1][:200]}"}


def start_worker(spec: dict, python: str | None = None) -> subprocess.Popen:
    return start_child(["-m", "safeload.bench.worker", json.dumps(spec)], python)


def run_worker(spec: dict, timeout: float | None = None, python: str | None = None) -> dict:
    return finish_child(start_worker(spec, python), timeout)


def run_idle_round(specs: list[tuple[dict, str | None]], timeout: float | None, idle: float) -> list[dict]:
    """The workers of one round of the idle state, started together: each sleeps ``idle``
    seconds, then waits for its turn, so runs follow one another as in the other states while
    the round costs one idle period, not one per entry. Returns their results in order."""
    procs = []
    try:
        for spec, python in specs:
            procs.append(start_worker(dict(spec, gate=True), python))
        return [finish_child(proc, None if timeout is None else timeout + idle) for proc in procs]
    finally:
        for proc in procs:  # on an interrupt, none is left waiting for its turn
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def loader_status(loader, device: str, interpreters: dict[str, str]) -> tuple[str | None, str | None, dict]:
    """(why ``loader`` cannot run on ``device`` or None, the interpreter to run it with, the
    package versions where it runs; empty when that is this process)."""
    if not loader.env:
        return loader.unavailable(device), None, {}
    python = interpreters.get(loader.env)
    if python is None:
        dist, prefix = loader.needs or (loader.module, "")
        return (f"not available: runs in an environment of its own; pass --python {loader.env}=PYTHON "
                f"(an interpreter with {dist} {prefix} and torch installed)"), None, {}
    found = run_worker({"kind": "check", "key": loader.key, "device": device}, 120, python)
    if "error" in found:
        return f"not available: {python}: {found['error']}", python, {}
    return found["unavailable"], python, found.get("packages", {})


def rotated(items: list, k: int) -> list:
    """``items`` starting ``k`` places in (modulo its length): the order of round ``k``."""
    shift = k % len(items) if items else 0
    return items[shift:] + items[:shift]


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def summarize(entry: Entry) -> dict:
    ok = [r for r in entry.runs if "error" not in r and not r.get("wrong_bytes")]
    out: dict = {"kind": entry.kind, "key": entry.key, "label": entry.label}
    if entry.unavailable:
        out["status"] = entry.unavailable
        return out
    errors = [r for r in entry.runs if "error" in r]
    wrong = [r for r in entry.runs if r.get("wrong_bytes")]
    if wrong:
        out["status"] = f"WRONG BYTES in {len(wrong)} of {len(entry.runs)} runs"
    elif errors:
        out["status"] = f"failed: {errors[0]['error']}"
    else:
        out["status"] = "ok"
    if not ok or wrong:
        return out
    secs = [r["seconds"] for r in ok]
    nbytes = ok[0]["nbytes"]
    out.update(
        runs=len(ok),
        nbytes=nbytes,
        seconds_median=_median(secs),
        seconds_min=min(secs),
        seconds_max=max(secs),
        gbps_median=nbytes / _median(secs) / 1e9,
        gbps_min=nbytes / max(secs) / 1e9,
        gbps_max=nbytes / min(secs) / 1e9,
        rss_peak_bytes=int(_median([r["rss_peak_bytes"] for r in ok])),
        rss_added_bytes=int(_median([r["rss_peak_bytes"] - r["rss_before_bytes"] for r in ok])),
    )
    if not entry.is_limit:
        out["seconds_touch_median"] = _median([r["seconds_touch"] for r in ok])
    resident = [r["resident_before"] for r in ok if r.get("resident_before") is not None]
    if resident:
        out["resident_before_min"] = min(resident)
        out["resident_before_max"] = max(resident)
    # Limits that try several ways (storage configurations, new-memory methods): each way's
    # median, so the way that set the limit, and how the others compare, are on record.
    for field in ("configs", "methods"):
        ways = list(dict.fromkeys(w for r in ok for w in r.get(field, {})))
        if ways:
            out[field + "_gbps_median"] = {
                w: nbytes / _median([r[field][w] for r in ok if w in r.get(field, {})]) / 1e9 for w in ways}
    if any("device_peak_bytes" in r for r in ok):
        out["device_peak_bytes"] = int(_median([r.get("device_peak_bytes", 0) for r in ok]))
    return out


def machine() -> dict:
    import torch

    info = {
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes spent busy, CPU seconds this process and its workers spent)."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy is all but idle, iowait and steal.
    busy = sum(fields[:8]) - fields[3] - fields[4] - (fields[7] if len(fields) > 7 else 0)
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        ours += r.ru_utime + r.ru_stime
    return busy / os.sysconf("SC_CLK_TCK"), ours


def _other_load(before, after, wall: float) -> float | None:
    if before is None or after is None or wall <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def storage_of(path: str) -> dict:
    """The file system and block device holding ``path`` (Linux), for describing the machine."""
    info: dict = {}
    try:
        dev = os.stat(path).st_dev
        best = ""
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                major, minor = (int(x) for x in parts[2].split(":"))
                if os.makedev(major, minor) != dev:
                    continue
                sep = parts.index("-")
                if len(parts[4]) >= len(best):
                    best = parts[4]
                    info = {"filesystem": parts[sep + 1], "source": parts[sep + 2]}
        block = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        for base in (block, os.path.dirname(block)):
            rot = os.path.join(base, "queue", "rotational")
            if os.path.exists(rot):
                info["block_device"] = os.path.basename(base)
                with open(rot) as f:
                    info["rotational"] = f.read().strip() == "1"
                break
    except (OSError, ValueError):
        pass
    return info


def package_versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("safetensors", "fastsafetensors", "runai-model-streamer", "instanttensor", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run(
    paths: list[str],
    *,
    devices: list[str],
    conditions: list[str],
    rounds: int,
    loader_keys: list[str] | None = None,
    threads: int | None = None,
    timeout: float | None = None,
    settle: float = 0.0,
    on_run: Callable[[int, int, str], None] | None = None,
    interpreters: dict[str, str] | None = None,
    states: list[str] | tuple[str, ...] = ("resident",),
    idle: float = DEFAULT_IDLE_SECONDS,
) -> dict:
    """Run the benchmark; return the JSON-ready results document. ``interpreters`` maps the
    environments some loaders need (``Loader.env``) to a Python interpreter. Warm runs are
    timed in each of ``states`` (``STATES``); cold runs in a fresh process only."""
    keys = loader_keys or [l.key for l in LOADERS]
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise ValueError(f"unknown process state(s) {unknown}; known: {', '.join(STATES)}")
    total_bytes = sum(os.path.getsize(p) for p in paths)
    expected = file_checksum(paths)
    storage_reason = next((r for r in (limits.odirect_unavailable(p) for p in paths) if r), None)

    blocks = []
    environments: dict[str, dict] = {}
    for device, condition, state in ((d, c, s) for d in devices for c in conditions
                                     for s in (states if c == "warm" else ("resident",))):
        entries = []
        for key in (keys if state == "resident" or loader_keys else [k for k in keys if k in STATE_LOADERS]):
            loader = BY_KEY[key]
            why, python, packages = loader_status(loader, device, interpreters or {})
            entries.append(Entry("loader", key, loader.label, why, python=python))
            if packages:
                environments[loader.env] = {"python": report.shown_path(python), "packages": packages}
        for kind in limits_for(device, condition, state):
            reason = storage_reason if kind == "storage" else None
            if kind == "h2d":
                reason = limits.h2d_unavailable(device)
            entries.append(Entry(kind, kind, LIMIT_LABELS[kind], reason))
        blocks.append((device, condition, state, entries))

    cpu_before = _cpu_seconds()
    total_runs = rounds * sum(1 for *_, es in blocks for e in es if not e.unavailable)
    done = 0
    started = time.time()

    def record(e: Entry, result: dict) -> None:
        nonlocal done
        if e.kind == "loader" and "checksum" in result and int(result["checksum"], 16) != expected:
            result["wrong_bytes"] = True
        e.runs.append(result)
        done += 1

    for device, condition, state, entries in blocks:
        runnable = [e for e in entries if not e.unavailable]
        where = f"{device} {condition}" + ("" if state == "resident" else f", {state}")
        for r in range(rounds):
            # Each round starts one entry later than the one before: a run pays for the memory
            # the run before it freed (a host that reclaims guest memory is still busy with it),
            # and the new-memory probe frees the most, so a fixed order would charge the same
            # entry every round. Rotated, each entry follows it at most once in len(runnable)
            # rounds, and the medians do not carry the order.
            order = rotated(runnable, r)
            specs = [{"kind": e.kind, "key": e.key, "paths": paths, "device": device, "condition": condition,
                      "state": state, "threads": threads, "nbytes": total_bytes,
                      "settle": idle if state == "idle" else settle, "round": r} for e in order]
            if condition == "warm" and state == "idle":
                _make_resident(paths)
                if on_run:
                    on_run(done, total_runs, f"{where} {r + 1}/{rounds}: every entry idle {idle:g} s")
                for e, result in zip(order, run_idle_round([(sp, e.python) for sp, e in zip(specs, order)],
                                                           timeout, idle)):
                    record(e, result)
                continue
            for e, spec in zip(order, specs):
                if on_run:
                    on_run(done, total_runs, f"{where} {r + 1}/{rounds} {e.label}")
                if condition == "warm":
                    _make_resident(paths)
                record(e, run_worker(spec, timeout, e.python))
    if on_run:
        on_run(done, total_runs, "done")

    results = []
    for device, condition, state, entries in blocks:
        rows = [summarize(e) for e in entries]
        limit_rows = [x for x in rows if x["kind"] != "loader" and "gbps_median" in x]
        limit = min((x["gbps_median"] for x in limit_rows), default=None)
        fast = next((x for x in rows if x["key"] == "safeload-fast" and "gbps_median" in x), None)
        for x in rows:
            if "gbps_median" not in x:
                continue
            if limit:
                x["ratio_to_limit"] = x["gbps_median"] / limit
            if fast:
                x["ratio_to_safeload_fast"] = x["gbps_median"] / fast["gbps_median"]
        results.append({
            "device": device,
            "condition": condition,
            "state": state,
            "state_label": STATES[state].format(idle=idle) if condition == "warm" else "a fresh process",
            "limit_gbps": limit,
            "limit_kinds": [x["kind"] for x in limit_rows],
            "rows": rows,
            "runs": {e.key: e.runs for e in entries if e.runs},
        })

    return {
        "schema": "safeload-bench/1",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": time.time() - started,
        # Other work on the machine competes with the runs: the cores it kept busy on average
        # while the benchmark ran, for the reader to judge (the report warns above 0.25).
        "other_load_cores": _other_load(cpu_before, _cpu_seconds(), time.time() - started),
        "machine": machine(),
        "storage": storage_of(paths[0]),
        "packages": package_versions(),
        "environments": environments,
        "files": [{"path": os.path.basename(p), "bytes": os.path.getsize(p)} for p in paths],
        "total_bytes": total_bytes,
        "checksum": f"{expected:016x}",
        "rounds": rounds,
        "threads": threads,
        "method": {
            "timed": "from the loader call until every tensor is on the device and every byte "
                     "of every tensor has been read once (checksum), one fresh process per run",
            "gbps": "file bytes / median seconds, decimal GB (1e9 bytes)",
            "cold": "posix_fadvise(POSIX_FADV_DONTNEED) on every file before each run",
            "warm": "files read through the page cache first; mincore checks residency",
            "rss": "peak RSS of the run's process during the timed region (VmHWM reset just "
                   "before it), and its growth over the RSS before the clock started",
            "order": "interleaved: every entry once per round, same order each round",
            "settle": f"{settle:g} s wait in each worker after the eviction, before its clock",
            "states": {k: v.format(idle=idle) for k, v in STATES.items() if k in states},
        },
        "results": results,
    }
