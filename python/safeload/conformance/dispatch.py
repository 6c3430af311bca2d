"""Feeding cases to workers: each case is loaded from a private copy of its file (a broken
loader must not be able to damage the corpus) by a worker process. A worker is reused across
cases while it behaves; when a case crashes it (segfault, abort, exit) or overruns the
timeout, that case is recorded as failed, the worker is killed and a fresh one takes the next
case."""
from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safeload.conformance.cases import Case
from safeload.conformance.process import STARTUP_TIMEOUT, Worker, stopping
from safeload.conformance.testee import ExecWorker, is_exec


def make_worker(loader: str, workdir: str, python: str | None = None):
    """A Python worker for ``MODULE:FUNC``, or an executable testee for ``exec:CMD``."""
    if is_exec(loader):
        return ExecWorker(loader, workdir, STARTUP_TIMEOUT)
    return Worker(loader, workdir, python=python)


def run_cases(
    loader: str,
    device: str,
    cases: Sequence[Case],
    *,
    timeout: float,
    jobs: int,
    workdir: str,
    ownership: bool = True,
    python: str | None = None,
    on_result: Callable[[Case, dict[str, Any] | None, str, float], None],
    on_start: Callable[[Case], None] | None = None,
) -> None:
    """Feed cases to ``jobs`` workers; report each (case, obs, failure, seconds), and each
    case as it starts to ``on_start``."""
    todo: queue.Queue[Case] = queue.Queue()
    for c in cases:
        todo.put(c)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def drive(slot: int) -> None:
        worker: Any = None
        private = Path(workdir) / f"{device.replace(':', '_')}-{slot}"
        private.mkdir(parents=True, exist_ok=True)
        try:
            while not stopping():
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                if worker is None or not worker.alive():
                    worker = make_worker(loader, workdir, python)
                copy = private / (case.name.replace("/", "_")[:200] + ".safetensors")
                shutil.copyfile(case.path, copy)
                if on_start is not None:
                    with lock:
                        on_start(case)
                t0 = time.monotonic()
                request = {"path": str(copy), "device": device, "ownership": ownership, "sha256": case.sha256,
                           "surface": case.surface}
                request.update(case.request or {})
                obs, failure = worker.request(request, timeout)
                elapsed = time.monotonic() - t0
                if obs is None:
                    worker.kill()
                    worker = None
                if stopping():  # the run was interrupted: a result cut short is not a verdict
                    return
                with lock:
                    on_result(case, obs, failure, elapsed)
                try:
                    copy.unlink()
                except OSError:
                    pass
        except BaseException as e:  # surfaces in the caller
            errors.append(e)
            while True:
                try:
                    todo.get_nowait()
                except queue.Empty:
                    break
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]




def offered_surfaces(loader: str, workdir: str, python: str | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """The surfaces ``loader`` offers, and the device types a surface is limited to (where
    the testee says so), as a worker reports them once it has imported it."""
    worker = make_worker(loader, workdir, python)
    try:
        return list(worker.surfaces), dict(worker.surface_devices)
    finally:
        worker.close()
