"""Named checks beyond one load of one file: the defects of parallel, chunked,
device-aware loaders that byte checks on small files miss. Each yields one
result, named ``check.<name>``, per device (so it can be listed as an expected
failure like any case).

- ``leak_fds``, ``leak_threads``, ``leak_memory``: the worker loads the same
  file over and over; the parent samples the worker's open descriptors,
  threads and resident memory after a warm-up and after the measured calls,
  and reports growth per call. The tolerances (half a descriptor or thread
  per call; a quarter of the file's data or 1 MiB per call) are far above
  what a correct loader shows (zero after warm-up) and far below a loader
  that keeps anything per call.
- ``thread_safety``: several threads of one worker load different files at
  once; every result must equal the one given alone.
- ``process_safety``: several workers load the same file at once; every
  result must be correct.
- ``file_independence``: once the call has returned, the file is replaced (a
  new file renamed over it, as re-saving a checkpoint does) and unlinked;
  only then are the tensors read, and they must hold the original bytes.

Each check runs through one surface: ``load_file`` (named ``check.<name>``), or
``safe_open`` (``safe_open:check.<name>``: a handle opened, every tensor taken by
``get_tensor``, the handle closed). Each is bounded by the run's timeout as a
whole: a loader that hangs anywhere inside one fails that check, and the run
goes on.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from safeload.conformance.cases import ACCEPT, REJECT, Case
from safeload.conformance.dispatch import make_worker
from safeload.conformance.judge import compare, describe_error, judge
from safeload.conformance.testee import is_exec

LEAK_FDS, LEAK_THREADS, LEAK_MEMORY = "leak_fds", "leak_threads", "leak_memory"
THREAD_SAFETY, PROCESS_SAFETY, FILE_INDEPENDENCE = "thread_safety", "process_safety", "file_independence"
CHECKS = (LEAK_FDS, LEAK_THREADS, LEAK_MEMORY, THREAD_SAFETY, PROCESS_SAFETY, FILE_INDEPENDENCE)

WARMUP_CALLS = 3
MEASURED_CALLS = 8
THREADS = 4
THREAD_ROUNDS = 3
PROCESSES = 3
PROCESS_ROUNDS = 2
# Corpus cases the thread and independence checks prefer (others are used
# when these are not in the run).
PREFERRED = ("y_dtype_all_in_one_file", "y_many_tensors", "y_odd_alignment", "y_dtype_BF16", "n_truncated_data")


def check_case(name: str, why: str, surface: str = "load_file") -> Case:
    prefix = "" if surface == "load_file" else f"{surface}:"
    return Case(name=f"{prefix}check.{name}", path="", expect=ACCEPT, why=why, origin="check", surface=surface)


def _usage(pid: int) -> dict[str, int]:
    """Open descriptors, threads and resident bytes of process ``pid``."""
    try:
        import psutil

        p = psutil.Process(pid)
        return {"fds": p.num_fds(), "threads": p.num_threads(), "rss": p.memory_info().rss}
    except ImportError:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"fds": fds, "threads": threads, "rss": rss}


def _pick(cases: Sequence[Case], medium: Case | None, n: int) -> list[Case]:
    """Up to ``n`` small corpus cases for the thread and independence checks:
    the preferred ones present, then other valid ones, plus the medium file."""
    by_name = {c.name: c for c in cases if c.origin == "corpus"}
    out = [by_name[p] for p in PREFERRED if p in by_name]
    out += [c for c in cases if c.origin == "corpus" and c.expect == ACCEPT and c.tensors and c not in out]
    out = out[: n - (medium is not None)]
    return out + ([medium] if medium is not None else [])


def _judge_data(case: Case, device: str, obs: dict[str, Any] | None, failure: str) -> tuple[bool | None, str]:
    """The verdict on what was loaded (names, dtypes, shapes, devices, bytes),
    without the per-tensor property checks: the main pass reports those, and
    a check must fail only for its own concern."""
    if obs is not None and obs.get("checks"):
        obs = dict(obs, checks={})
    return judge(case, device, obs, failure, False)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def runnable(loader: str, names: Sequence[str], have_medium: bool = True) -> list[str]:
    """The named checks that can run for ``loader``: an executable testee serves one request
    at a time, so the checks that need its tensors in the harness's process cannot."""
    wanted = [n for n in CHECKS if n in names]
    if is_exec(loader):
        wanted = [n for n in wanted if n not in (THREAD_SAFETY, FILE_INDEPENDENCE)]
    if not have_medium:
        wanted = [n for n in wanted if n in (THREAD_SAFETY, FILE_INDEPENDENCE)]
    return wanted


def run_checks(loader: str, device: str, names: Sequence[str], cases: Sequence[Case], medium: Case | None, *,
               timeout: float, workdir: str, python: str | None, log: Callable[[str], None],
               not_run: list[tuple[str, str]], surface: str = "load_file",
               on_start: Callable[[str], None] = lambda name: None) -> Iterator[tuple[Case, bool | None, str, float]]:
    """Yields (check case, passed, detail, seconds) per check run through ``surface``;
    ``on_start(name)`` as each starts."""
    private = Path(workdir) / f"checks-{device.replace(':', '_')}-{surface}"
    private.mkdir(parents=True, exist_ok=True)
    wanted = runnable(loader, names)
    for n in CHECKS:
        if n in names and n not in wanted:
            not_run.append((f"{check_case(n, '', surface).name} [{device}]", "needs the tensors in the harness's "
                            "process; an executable testee serves one request at a time"))

    def copy(case: Case, tag: str = "") -> str:
        dst = private / f"{case.name}{tag}.safetensors"
        shutil.copyfile(case.path, dst)
        return str(dst)

    # One worker serves the leak check (first, while fresh), then the
    # independence and thread checks, then joins the process check.
    pool = _Pool(loader, workdir, python, surface)
    try:
        leak = [n for n in wanted if n.startswith("leak_")]
        if leak and medium is not None:
            on_start("leaks")
            yield from _leaks(pool, device, leak, medium, copy(medium), timeout=timeout)
        if FILE_INDEPENDENCE in wanted:
            on_start(FILE_INDEPENDENCE)
            yield _independence(pool, device, [c for c in _pick(cases, medium, 4) if c.expect == ACCEPT], copy,
                                timeout=timeout)
        if THREAD_SAFETY in wanted:
            on_start(THREAD_SAFETY)
            yield _threads(pool, device, _pick(cases, medium, THREADS), copy, timeout=timeout)
        if PROCESS_SAFETY in wanted and medium is not None:
            on_start(PROCESS_SAFETY)
            yield _processes(pool, device, medium, copy(medium, ".shared"), timeout=timeout)
    finally:
        pool.close()


class _Pool:
    """Workers for the checks, started on demand, replaced when one dies."""

    def __init__(self, loader: str, workdir: str, python: str | None, surface: str = "load_file"):
        self.loader, self.workdir, self.python, self.surface = loader, workdir, python, surface
        self.workers: list[Any] = []

    def case(self, name: str, why: str) -> Case:
        return check_case(name, why, self.surface)

    def request(self, i: int, msg: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str]:
        """Worker ``i``'s answer to ``msg`` through this pool's surface, within ``timeout``."""
        return self.get(i).request(dict(msg, surface=self.surface), max(1.0, timeout))

    def get(self, i: int = 0) -> Any:
        while len(self.workers) <= i:
            self.workers.append(None)
        if self.workers[i] is None or not self.workers[i].alive():
            self.workers[i] = make_worker(self.loader, self.workdir, self.python)
        return self.workers[i]

    def start(self, n: int) -> None:
        """Start workers 0..n-1 in parallel (each imports torch: seconds)."""
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                self.get(i)
            except BaseException as e:
                errors.append(e)

        while len(self.workers) < n:
            self.workers.append(None)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]

    def discard(self, i: int) -> None:
        if self.workers[i] is not None:
            self.workers[i].kill()
            self.workers[i].close()
            self.workers[i] = None

    def close(self) -> None:
        for w in self.workers:
            if w is not None:
                w.close()


def _leaks(pool: _Pool, device, names, medium: Case, path: str, *, timeout):
    t0 = time.monotonic()
    deadline = t0 + timeout
    results: list[tuple[Case, bool | None, str, float]] = []
    samples = []
    for i in range(WARMUP_CALLS + MEASURED_CALLS):
        if i == WARMUP_CALLS:
            samples.append(_usage(pool.get().pid))
        obs, failure = pool.request(0, {"path": path, "device": device, "ownership": False},
                                    deadline - time.monotonic())
        passed, detail = _judge_data(medium, device, obs, failure)
        if not passed:
            why = f"call {i + 1} of the same file failed: {detail}"
            if obs is None and time.monotonic() >= deadline:
                why = (f"{WARMUP_CALLS + MEASURED_CALLS} loads of {medium.name} did not finish within the "
                       f"{timeout:g} s timeout (call {i + 1}: {detail})")
            for n in names:
                results.append((pool.case(n, "repeated loads"), False, why, time.monotonic() - t0))
            if obs is None:
                pool.discard(0)
            return iter(results)
    samples.append(_usage(pool.get().pid))
    seconds = time.monotonic() - t0
    before, after = samples
    data_bytes = sum(t.nbytes for t in (medium.tensors or {}).values())
    per_call = {k: (after[k] - before[k]) / MEASURED_CALLS for k in before}
    limits = {"fds": 0.5, "threads": 0.5, "rss": max(1 << 20, data_bytes / 4)}
    span = f"over {MEASURED_CALLS} calls after {WARMUP_CALLS} warm-up calls of {medium.name}"
    what = {LEAK_FDS: ("fds", "open file descriptors", lambda v: f"{v:+.2f}"),
            LEAK_THREADS: ("threads", "threads", lambda v: f"{v:+.2f}"),
            LEAK_MEMORY: ("rss", "resident memory", lambda v: ("+" if v >= 0 else "-") + _mib(abs(v)))}
    for n in names:
        key, label, fmt = what[n]
        grew = per_call[key] > limits[key]
        detail = (f"{label} {fmt(per_call[key])} per call {span} (from {before[key]} to {after[key]}"
                  f"{' bytes' if key == 'rss' else ''}; tolerance {fmt(limits[key])} per call)")
        results.append((pool.case(n, "repeated loads of one file"), not grew, detail, seconds))
    return iter(results)


def _threads(pool: _Pool, device, cases: list[Case], copy, *, timeout):
    t0 = time.monotonic()
    case = pool.case(THREAD_SAFETY, "concurrent loads from threads")
    paths = [copy(c) for c in cases]
    obs, failure = pool.request(0, {"op": "threads", "paths": paths, "device": device, "threads": THREADS,
                                    "rounds": THREAD_ROUNDS}, timeout)
    if obs is None:
        pool.discard(0)
    seconds = time.monotonic() - t0
    if obs is None:
        return case, False, f"{THREADS} threads loading at once: {failure}", seconds
    if obs["mismatches"]:
        m = obs["mismatches"]
        return case, False, (f"{len(m)} of {THREAD_ROUNDS * THREADS} concurrent calls differ from the same call "
                             f"made alone: " + "; ".join(m[:3])), seconds
    return case, True, (f"{THREAD_ROUNDS} rounds of {THREADS} threads over {', '.join(c.name for c in cases)}: "
                        "every result equals the one given alone"), seconds


def _processes(pool: _Pool, device, medium: Case, path: str, *, timeout):
    t0 = time.monotonic()
    case = pool.case(PROCESS_SAFETY, "concurrent loads of one file from processes")
    bad: list[str] = []
    try:
        pool.start(PROCESSES)
    except Exception as e:
        return case, False, f"could not start {PROCESSES} workers: {e}", time.monotonic() - t0
    deadline = time.monotonic() + timeout  # for the loads, once the workers have started
    for r in range(PROCESS_ROUNDS):
        got: dict[int, tuple[Any, str]] = {}

        def one(i: int) -> None:
            got[i] = pool.request(i, {"path": path, "device": device, "ownership": False}, deadline - time.monotonic())

        ts = [threading.Thread(target=one, args=(i,)) for i in range(PROCESSES)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for i in range(PROCESSES):
            obs, failure = got[i]
            passed, detail = _judge_data(medium, device, obs, failure)
            if not passed:
                bad.append(f"round {r}, process {i}: {detail}")
            if obs is None:
                pool.discard(i)
    seconds = time.monotonic() - t0
    if bad:
        return case, False, (f"{len(bad)} of {PROCESS_ROUNDS * PROCESSES} loads of {medium.name} by {PROCESSES} "
                             "processes at once are wrong: " + "; ".join(bad[:3])), seconds
    return case, True, f"{PROCESS_ROUNDS} rounds of {PROCESSES} processes loading {medium.name} at once: all correct", seconds


def _independence(pool: _Pool, device, cases: list[Case], copy, *, timeout):
    t0 = time.monotonic()
    case = pool.case(FILE_INDEPENDENCE, "tensors read after the file is replaced and unlinked")
    deadline = t0 + timeout
    bad: list[str] = []
    skipped: list[str] = []
    for c in cases:
        obs, failure = pool.request(0, {"op": "independence", "path": copy(c, ".indep"), "device": device},
                                    deadline - time.monotonic())
        if obs is None:
            bad.append(f"{c.name}: {failure}")
            pool.discard(0)
        elif not obs["accepted"] and not obs.get("after_replace"):
            skipped.append(c.name)  # rejected before the check's concern: the main pass reports it
        elif not obs["accepted"]:
            bad.append(f"{c.name}: reading the result after the file was replaced raised {describe_error(obs)}")
        else:
            diffs = [m for _, _, m in compare(c, device, obs) if m]
            if diffs:
                bad.append(f"{c.name}: " + "; ".join(diffs[:3]))
    seconds = time.monotonic() - t0
    if bad:
        return case, False, ("once the call returned, the file was replaced and unlinked, and then the tensors "
                             "no longer held the original bytes: " + "; ".join(bad[:3])), seconds
    note = f" ({', '.join(skipped)}: rejected by the loader, not used)" if skipped else ""
    if len(skipped) == len(cases):
        return case, False, f"the loader rejected every file the check uses{note}", seconds
    return case, True, (f"{len(cases) - len(skipped)} files replaced and unlinked after the call; "
                        f"tensors kept their bytes{note}"), seconds
