"""The process layer of the harness: the child processes a loader runs in.

A :class:`Worker` is a Python process that imports the loader once and serves requests on
private pipes (:mod:`safeload.conformance.worker`); an executable testee
(:mod:`safeload.conformance.testee`) is the same for loaders outside Python. Each runs in a
session of its own, so a kill takes its children too, with its output in a log file the
harness owns. Nothing here judges anything.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class LoaderUnavailable(RuntimeError):
    """The loader cannot be imported (e.g. its package is not installed)."""


class WorkerStartError(RuntimeError):
    pass


# Every child started and not yet reaped, so that an interrupted run can end them all; and
# whether the run is stopping (no more cases are started, results still arriving are dropped).
_children: set["ChildProcess"] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


def stop_children() -> None:
    """Stops the run: kills every child process still running."""
    _stopping.set()
    with _children_lock:
        children = list(_children)
    for child in children:
        child.kill()


def stopping() -> bool:
    return _stopping.is_set()


def start_run() -> None:
    """A new run begins (a stop of an earlier run in this process no longer applies)."""
    _stopping.clear()


STARTUP_TIMEOUT = 120.0


def package_root() -> str:
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

    def _register(self) -> None:
        with _children_lock:
            _children.add(self)

    def _forget(self) -> None:
        with _children_lock:
            _children.discard(self)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._forget()

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
            p for p in (package_root(), os.getcwd(), environ.get("PYTHONPATH", "")) if p
        )
        environ.setdefault("PYTHONFAULTHANDLER", "1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [python or sys.executable, "-m", "safeload.conformance.worker", "--loader", loader,
                 "--in-fd", str(req_r), "--out-fd", str(resp_w)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(req_r, resp_w), env=environ, start_new_session=True,
            )
        self._register()
        os.close(req_r)
        os.close(resp_w)
        self._buf = b""
        self._eof = False
        msg = self._receive(STARTUP_TIMEOUT)
        #: The surfaces the testee offers (load_file, load, safe_open), and where a surface
        #: runs on some device types alone, those ({"prefetch": ["cuda"]}).
        self.surfaces = list((msg or {}).get("surfaces", ["load_file"]))
        self.surface_devices = dict((msg or {}).get("surface_devices", {}))
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
        self._forget()
        try:
            os.close(self._resp_r)
        except OSError:
            pass


