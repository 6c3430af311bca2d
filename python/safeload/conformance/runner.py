"""Runs cases through isolated worker processes and judges the observations.

Each case is loaded from a private copy of its file (a broken loader must not
be able to damage the corpus) by a worker process. A worker is reused across
cases while it behaves; when a case crashes it (segfault, abort, exit) or
overruns the timeout, that case is recorded as failed, the worker is killed
and a fresh one takes the next case.
"""
from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safeload.conformance.cases import IMPL, REJECT, Case
from safeload.conformance.report import FAILED, IMPL_DEFINED, PASSED, XFAIL, XPASS, Report, Result

STARTUP_TIMEOUT = 120.0


class LoaderUnavailable(RuntimeError):
    """The loader cannot be imported (e.g. its package is not installed)."""


class WorkerStartError(RuntimeError):
    pass


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class ChildProcess:
    """What a worker and an executable testee share: a child process in a
    session of its own (so a kill takes its children too), its output in a
    log file the harness owns."""

    noun = "worker"       # in messages
    log_noun = "output"   # what the log holds

    def _open_log(self, log_dir: str) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix=f"{self.noun}-", suffix=".log", dir=log_dir)
        os.close(fd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _wait_or_kill(self, timeout: float = 10) -> None:
        """After its input is closed: lets the child exit, or kills it."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _why_dead(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        what = f"crashed ({_signal_name(code)})" if code < 0 else f"{self.noun} exited with status {code}"
        tail = self.log_tail(600)
        return what + (f"; {self.noun} {self.log_noun} ends: {tail}" if tail else "")


class Worker(ChildProcess):
    """One worker process for one loader."""

    def __init__(self, loader: str, log_dir: str, env: dict[str, str] | None = None, python: str | None = None):
        self.loader = loader
        req_r, self._req_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        self._open_log(log_dir)
        environ = dict(os.environ if env is None else env)
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), os.getcwd(), environ.get("PYTHONPATH", "")) if p
        )
        environ.setdefault("PYTHONFAULTHANDLER", "1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [python or sys.executable, "-m", "safeload.conformance.worker", "--loader", loader,
                 "--in-fd", str(req_r), "--out-fd", str(resp_w)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(req_r, resp_w), env=environ, start_new_session=True,
            )
        os.close(req_r)
        os.close(resp_w)
        self._buf = b""
        self._eof = False
        msg = self._receive(STARTUP_TIMEOUT)
        if msg is None or not msg.get("ready"):
            detail = (msg or {}).get("error") or self._why_dead() or "no reply"
            self.kill()
            if msg and msg.get("unavailable"):
                raise LoaderUnavailable(detail)
            raise WorkerStartError(f"loader {loader!r} could not be started: {detail}\n{self.log_tail()}")

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """Next message, or None on timeout or if the worker died."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._resp_r], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._resp_r, 1 << 20)
            if not chunk:
                self._eof = True  # the worker closed its end: it exited or died
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, msg: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str]:
        """(observation, "") or (None, why it failed: crash or timeout)."""
        try:
            os.write(self._req_w, (json.dumps(msg) + "\n").encode())
        except OSError:
            return None, self._why_dead() or "worker is gone"
        reply = self._receive(timeout)
        if reply is not None:
            return reply, ""
        if not self._eof and self.proc.poll() is None:
            self.kill()
            return None, f"timed out after {timeout:g} s (hang)"
        return None, self._why_dead()

    def close(self) -> None:
        try:
            os.close(self._req_w)
        except OSError:
            pass
        self._wait_or_kill()
        try:
            os.close(self._resp_r)
        except OSError:
            pass


def _device_matches(observed: str, requested: str) -> bool:
    if observed == requested:
        return True
    req_type, _, req_index = requested.partition(":")
    obs_type, _, obs_index = observed.partition(":")
    if req_type != obs_type:
        return False
    return not req_index or req_index == obs_index


def make_worker(loader: str, workdir: str, python: str | None = None):
    """A Python worker for ``MODULE:FUNC``, or an executable testee for ``exec:CMD``."""
    from safeload.conformance.testee import ExecWorker, is_exec

    if is_exec(loader):
        return ExecWorker(loader, workdir, STARTUP_TIMEOUT)
    return Worker(loader, workdir, python=python)


def judge(case: Case, device: str, obs: dict[str, Any] | None, failure: str, strict_codes: bool) -> tuple[bool | None, str]:
    """(passed, detail); passed is None for implementation-defined cases that
    did not crash (their behaviour is only recorded)."""
    passed, detail, _ = judge_checks(case, device, obs, failure, strict_codes)
    return passed, detail


def judge_checks(case: Case, device: str, obs: dict[str, Any] | None, failure: str,
                 strict_codes: bool) -> tuple[bool | None, str, dict[str | None, list[str]]]:
    """Like :func:`judge`, plus the failed checks: tensor name (None for the
    whole file) -> names of the checks that failed for it."""
    if obs is None:
        return False, failure, {None: ["crash" if "crash" in failure else "hang" if "timed out" in failure else "worker"]}
    if case.expect == IMPL:
        if obs["accepted"]:
            names = sorted(obs.get("tensors", {}))
            same = case.tensors is not None and _compare(case, device, obs) == []
            return None, f"accepted ({len(names)} tensors{', as the lenient reading expects' if same else ''})", {}
        return None, f"rejected: {_describe_error(obs)}", {}
    if case.expect == REJECT:
        if obs["accepted"]:
            return False, f"accepted a malformed file (returned {len(obs.get('tensors', {}))} tensors)", {None: ["rejects_malformed"]}
        if strict_codes and case.error and obs.get("error_code") != case.error:
            return (False, f"rejected with code {obs.get('error_code')!r}, expected {case.error!r}: {obs.get('error')}",
                    {None: ["error_code"]})
        return True, f"rejected: {_describe_error(obs)}", {}
    if not obs["accepted"]:
        return False, f"rejected a valid file: {_describe_error(obs)}", {None: ["accepts_valid"]}
    found = _compare(case, device, obs)
    found += [("result", None, p) for p in obs.get("problems", [])]
    for check, msgs in sorted(obs.get("checks", {}).items()):
        for m in msgs:
            name = m.split("'")[1] if m.startswith("'") and m.count("'") >= 2 else None
            found.append((check, name, m))
    if found:
        problems = [f"[{check}] {msg}" for check, _, msg in found if msg]
        failed: dict[str | None, list[str]] = {}
        for check, name, _ in found:
            if check not in failed.setdefault(name, []):
                failed[name].append(check)
        detail = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        return False, detail, failed
    return True, f"{len(obs['tensors'])} tensors identical", {}


def _describe_error(obs: dict[str, Any]) -> str:
    code = f" [{obs['error_code']}]" if obs.get("error_code") else ""
    return f"{obs.get('error_type')}{code}: {obs.get('error', '')[:200]}"


def expected_view(case: Case) -> dict[str, dict[str, Any]]:
    """Torch-side expectation per tensor: dtype, shape, sha256."""
    if case.observed is not None:
        return {k: dict(v) for k, v in case.observed.items()}
    want = {}
    for name, t in (case.tensors or {}).items():
        want[name] = {"dtype": t.torch_dtype, "shape": None if t.torch_shape is None else list(t.torch_shape),
                      "sha256": t.sha256, "format_dtype": t.dtype}
    return want


def _compare(case: Case, device: str, obs: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """(check, tensor name or None, message) for every difference."""
    got = obs.get("tensors", {})
    want = expected_view(case)
    problems: list[tuple[str, str | None, str]] = []
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        # Attributed to each missing tensor (so to its dtype), the message once.
        problems.append(("names", missing[0], f"missing tensors {_names(missing)}"))
        problems += [("names", name, "") for name in missing[1:]]
    if extra:
        problems.append(("names", None, f"unexpected tensors {_names(extra)}"))
    for name in sorted(set(want) & set(got)):
        w, g = want[name], got[name]
        if w["dtype"] != g["dtype"]:
            problems.append(("dtype", name, f"{name!r}: dtype {g['dtype']}, expected {w['dtype']}"))
        if w["shape"] != g["shape"]:
            problems.append(("shape", name, f"{name!r}: shape {g['shape']}, expected {w['shape']}"))
        if not _device_matches(g["device"], device):
            why = " (wrong device index)" if g["device"].partition(":")[0] == device.partition(":")[0] else ""
            problems.append(("device", name, f"{name!r}: on device {g['device']}, expected {device}{why}"))
        if w["sha256"] != g["sha256"]:
            problems.append(("bytes", name, f"{name!r}: bytes differ from the file's"))
    return problems


def _run_cases(
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
            while True:
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                if worker is None or not worker.alive():
                    worker = make_worker(loader, workdir, python)
                copy = private / (case.name + ".safetensors")
                shutil.copyfile(case.path, copy)
                if on_start is not None:
                    with lock:
                        on_start(case)
                t0 = time.monotonic()
                obs, failure = worker.request(
                    {"path": str(copy), "device": device, "ownership": ownership, "sha256": case.sha256},
                    timeout,
                )
                elapsed = time.monotonic() - t0
                if obs is None:
                    worker.kill()
                    worker = None
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


def run(
    loader: str,
    *,
    devices: Sequence[str] = ("cpu",),
    cases: Sequence[Case] = (),
    expected_failures: dict[str, str] | None = None,
    timeout: float = 60.0,
    jobs: int = 1,
    strict_codes: bool = False,
    property_cases: int = 0,
    seed: int = 0,
    reference: str = "safeload.conformance.adapters.safeload_reference:load_file",
    checks: Sequence[str] = (),
    generated: bool = False,
    large: bool = False,
    upstream: str | None = None,
    python: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: Any = None,
) -> Report:
    """Run ``loader`` (a ``MODULE:FUNC`` spec, or ``exec:CMD`` for an
    executable testee) over ``cases`` on each device, plus:

    - ``property_cases`` Hypothesis-generated cases from ``seed`` whose
      verdicts on corrupted files come from ``reference``;
    - with ``generated``, run-time files of tens of MiB across chunk
      boundaries (and with ``large``, a tensor and a file over 4 GiB);
    - the named ``checks`` (see :data:`safeload.conformance.checks.CHECKS`):
      leaks, thread and process safety, independence from the file;
    - with ``upstream`` (a loader spec), the key order and error class of
      every case compared with that loader's, as information.

    ``python`` runs the loader's worker under another interpreter (e.g. a
    virtual environment with another version of a peer). ``progress`` (a
    :class:`safeload.conformance.progress.Progress`) is told of each phase,
    each case as it starts and each verdict; messages then go through it.
    Raises LoaderUnavailable if the loader cannot be imported."""
    from safeload.conformance import checks as checks_mod
    from safeload.conformance.progress import Progress

    progress = progress or Progress(mode="quiet")
    if log is None:
        log = lambda s: None  # noqa: E731
    elif progress.mode != "quiet":
        log = progress.log
    expected_failures = dict(expected_failures or {})
    unknown = sorted(set(checks) - set(checks_mod.CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(checks_mod.CHECKS)}")
    use_seed = property_cases or generated or checks
    report = Report(loader=loader, devices=list(devices), seed=seed if use_seed else None,
                    property_cases=property_cases, expected_failures=expected_failures)
    with tempfile.TemporaryDirectory(prefix="safeload-conform-") as workdir:
        all_cases = list(cases)
        if property_cases:
            from safeload.conformance import properties

            log(f"property cases: {property_cases} from seed {seed} (reproduce with --seed {seed})")
            generated_cases = properties.generate(seed, property_cases, Path(workdir) / "property")

            def reference_cases(*args, on_result, **kwargs):
                def done(*result):
                    on_result(*result)
                    progress.done()

                _run_cases(*args, on_result=done, on_start=lambda c: progress.start(c.name), **kwargs)

            progress.phase("reference verdicts", sum(1 for c in generated_cases if c.tensors is None))
            try:
                all_cases += properties.with_reference_verdicts(
                    generated_cases, reference, timeout=timeout, jobs=jobs, workdir=workdir, run_cases=reference_cases,
                    log=log
                )
            except (LoaderUnavailable, WorkerStartError) as e:
                log(f"reference loader {reference} unavailable, corrupted property cases skipped: {e}")
                all_cases += [c for c in generated_cases if c.tensors is not None]
        gen_dir = Path(workdir) / "generated"
        gen_dir.mkdir()
        medium = None
        if generated or large or checks:
            from safeload.conformance import generated as gen

            log(f"generated cases from seed {seed} (reproduce with --seed {seed})")
            medium = gen.medium_case(seed, gen_dir)
            if generated:
                all_cases.append(gen.chunk_case(seed, gen_dir))
            if large:
                log("writing the over-4-GiB case (--large)")
                all_cases.append(gen.over_4gib_case(seed, gen_dir))
        n_checks = len(checks_mod.runnable(loader, checks, medium is not None))
        progress.phase("cases", (len(all_cases) + n_checks) * len(devices))
        for device in devices:
            def on_result(case: Case, obs: dict[str, Any] | None, failure: str, seconds: float,
                          device: str = device) -> None:
                passed, detail, failed = judge_checks(case, device, obs, failure, strict_codes)
                outcome = _record(report, expected_failures, case, device, passed, detail, failed, seconds, obs, log)
                progress.done(failed=outcome in (FAILED, XPASS))

            _run_cases(loader, device, all_cases, timeout=timeout, jobs=jobs, workdir=workdir, python=python,
                       on_result=on_result, on_start=lambda c, d=device: progress.start(f"{c.name} [{d}]"))
            if checks:
                for case, passed, detail, seconds in checks_mod.run_checks(
                        loader, device, checks, all_cases, medium, timeout=timeout, workdir=workdir, python=python,
                        log=log, not_run=report.not_run, on_start=lambda n, d=device: progress.start(f"check.{n} [{d}]")):
                    failed = {None: [case.name.removeprefix("check.")]} if passed is False else {}
                    outcome = _record(report, expected_failures, case, device, passed, detail, failed, seconds, None,
                                      log)
                    progress.done(failed=outcome in (FAILED, XPASS))
        if upstream:
            report.upstream = upstream
            _compare_upstream(report, upstream, all_cases, devices[0], timeout=timeout, jobs=jobs, workdir=workdir,
                              log=log, progress=progress)
        progress.close()
        seen = {r.case.name for r in report.results}
        report.stale_expected = sorted(n for n in expected_failures if n not in seen)
    return report


def _record(report: Report, expected_failures: dict[str, str], case: Case, device: str, passed: bool | None,
            detail: str, failed: dict[str | None, list[str]], seconds: float, obs: dict[str, Any] | None,
            log: Callable[[str], None]) -> str:
    """Adds the verdict to the report; returns its outcome."""
    listed = case.name in expected_failures
    if passed is None:
        outcome = IMPL_DEFINED
    elif passed:
        outcome = XPASS if listed else PASSED
    else:
        outcome = XFAIL if listed else FAILED
    if outcome == XPASS:
        detail = f"passes but is listed as an expected failure ({expected_failures[case.name]}); remove it from the list"
    elif outcome == XFAIL:
        detail = f"{detail} (expected: {expected_failures[case.name]})"
    report.add(Result(case=case, device=device, outcome=outcome, detail=detail, seconds=seconds,
                      observation=obs, failed_checks=failed))
    if outcome in (FAILED, XPASS):
        log(f"FAIL {case.name} [{device}]: {detail}")
    return outcome


def _compare_upstream(report: Report, upstream: str, cases: Sequence[Case], device: str, *, timeout: float,
                      jobs: int, workdir: str, log: Callable[[str], None], progress: Any) -> None:
    """Information, not a verdict: where the loader's key order or error class
    differs from ``upstream``'s on the same files."""
    theirs: dict[str, dict[str, Any]] = {}

    def on_result(case: Case, obs: dict[str, Any] | None, failure: str, seconds: float) -> None:
        if obs is not None:
            theirs[case.name] = obs
        progress.done()

    compared = [c for c in cases if c.origin != "generated"]
    progress.phase("upstream comparison", len(compared))
    try:
        _run_cases(upstream, device, compared, timeout=timeout, jobs=jobs, workdir=workdir, ownership=False,
                   on_result=on_result, on_start=lambda c: progress.start(c.name))
    except (LoaderUnavailable, WorkerStartError) as e:
        report.not_run.append(("upstream comparison", f"{upstream} unavailable: {e}"))
        return
    for r in report.results:
        if r.device != device or r.observation is None or r.case.name not in theirs:
            continue
        mine, ref = r.observation, theirs[r.case.name]
        if mine.get("accepted") and ref.get("accepted"):
            if mine.get("order") and mine.get("order") != ref.get("order"):
                report.info.setdefault("key_order", []).append(
                    (r.case.name, f"returns {_names(mine['order'], 4)}; upstream {_names(ref['order'], 4)}"))
        elif (not mine.get("accepted") and not ref.get("accepted") and r.case.expect == REJECT
              and not report.loader.startswith("exec:")):  # an executable's errors are its language's
            if not _same_error_class(mine, ref):
                report.info.setdefault("error_class", []).append(
                    (r.case.name, f"raises {mine.get('error_type')}; upstream raises {ref.get('error_type')}"))


def _same_error_class(mine: dict[str, Any], ref: dict[str, Any]) -> bool:
    """Same class, or a subclass of upstream's (what ``except`` in user code
    sees): safeload's SafetensorError derives from upstream's."""
    theirs = ref.get("error_type")
    return mine.get("error_type") == theirs or theirs in (mine.get("error_mro") or [])


def _names(names: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
