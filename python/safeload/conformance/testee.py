"""Executable testees: loaders outside Python (C++, Rust, a service) judged
through a small pipe protocol, in the spirit of protobuf's conformance
testees. The protocol is specified in ``conformance/README.md``; in short:

- the harness starts the executable with its stdin and stdout as pipes;
- every message, both ways, is a 4-byte little-endian length followed by that
  many bytes of UTF-8 JSON (stdout carries nothing else: log to stderr);
- the harness sends ``{"op": "hello", "protocol": 1}`` first; the testee
  answers ``{"ok": true, "protocol": 1, "name": ...}``;
- then one ``{"op": "load", "path", "device", "out_dir", "want"}`` per case;
  the testee answers ``{"ok": true, "tensors": [...]}`` (each ``name``,
  ``dtype``, ``shape``, ``device`` and either ``sha256`` of the raw bytes or
  ``bytes_file``, a file it wrote under ``out_dir``) or ``{"ok": false,
  "error_type", "message"[, "error_code"]}``;
- closing its stdin asks it to exit.

:class:`ExecWorker` has the interface of the Python worker, so crash
isolation, timeouts, expected-failure lists, the leak and process checks work
the same for executables. Checks that need to hold the tensors (ownership,
contiguity, gradients, threads, independence from the file) are the testee's
own business and are reported as not run.
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import shlex
import struct
import subprocess
import tempfile
import time
from typing import Any

from safeload.conformance.cases import TORCH_DTYPES, _PACKED_LAST_DIM
from safeload.conformance.process import STARTUP_TIMEOUT, ChildProcess, WorkerStartError, package_root

PROTOCOL = 1
PREFIX = "exec:"
_TORCH_NAMES = set(TORCH_DTYPES.values())


def is_exec(loader: str) -> bool:
    return loader.startswith(PREFIX)


def command(loader: str) -> list[str]:
    argv = shlex.split(loader[len(PREFIX):])
    if not argv:
        raise ValueError(f"loader {loader!r}: no command after {PREFIX!r}")
    return argv


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg).encode()
    return struct.pack("<I", len(body)) + body


class ProtocolError(RuntimeError):
    pass


class ExecWorker(ChildProcess):
    """One running testee executable."""

    noun = "testee"
    log_noun = "stderr"
    #: The protocol carries load_file alone: the other surfaces are reported as not run.
    surfaces = ["load_file"]
    surface_devices: dict = {}

    def __init__(self, loader: str, log_dir: str, startup_timeout: float = STARTUP_TIMEOUT):
        self.loader = loader
        self._open_log(log_dir)
        self.out_dir = tempfile.mkdtemp(prefix="testee-out-", dir=log_dir)
        argv = command(loader)
        env = dict(os.environ)  # so a testee written in Python finds this package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                             start_new_session=True, env=env)
            except OSError as e:
                raise WorkerStartError(f"testee {argv[0]!r} could not be started: {e}") from e
        self._register()
        self._buf = b""
        self._eof = False
        reply, failure = self._exchange({"op": "hello", "protocol": PROTOCOL}, startup_timeout)
        if reply is None or not reply.get("ok"):
            detail = failure or (reply or {}).get("message") or "no reply"
            self.kill()
            raise WorkerStartError(f"testee {loader!r} did not answer hello: {detail}\n{self.log_tail()}")
        if reply.get("protocol") != PROTOCOL:
            self.kill()
            raise WorkerStartError(f"testee {loader!r} speaks protocol {reply.get('protocol')!r}, expected {PROTOCOL}")

    def _read_exact(self, n: int, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self._eof = True
                return None
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _exchange(self, msg: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str]:
        try:
            self.proc.stdin.write(encode(msg))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None, self._why_dead() or "testee is gone"
        deadline = time.monotonic() + timeout
        head = self._read_exact(4, deadline)
        body = None
        if head is not None:
            (n,) = struct.unpack("<I", head)
            if n > 256 << 20:
                self.kill()
                return None, f"protocol error: a reply of {n} bytes (stray output on stdout?)"
            body = self._read_exact(n, deadline)
        if body is None:
            if not self._eof and self.proc.poll() is None:
                self.kill()
                return None, f"timed out after {timeout:g} s (hang)"
            return None, self._why_dead()
        try:
            return json.loads(body), ""
        except ValueError as e:
            self.kill()
            return None, f"protocol error: reply is not JSON ({e}; stray output on stdout?)"

    def request(self, msg: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str]:
        """Same contract as the Python worker's: (observation, "") or (None, why)."""
        op = msg.get("op", "load")
        if op != "load" or msg.get("surface", "load_file") != "load_file":
            return {"accepted": False, "error_type": "unsupported", "error": f"executable testees do not serve {op!r}"}, ""
        for f in os.listdir(self.out_dir):
            os.unlink(os.path.join(self.out_dir, f))
        t0 = time.monotonic()
        reply, failure = self._exchange(
            {"op": "load", "path": msg["path"], "device": msg["device"], "out_dir": self.out_dir, "want": "any"}, timeout)
        if reply is None:
            return None, failure
        return self._observation(reply, time.monotonic() - t0), ""

    def _observation(self, reply: dict[str, Any], seconds: float) -> dict[str, Any]:
        if not reply.get("ok"):
            return {"accepted": False, "error_type": str(reply.get("error_type", "error")),
                    "error_code": reply.get("error_code"), "error": str(reply.get("message", ""))[:500],
                    "seconds": seconds}
        problems: list[str] = []
        described: dict[str, Any] = {}
        order: list[str] = []
        for i, t in enumerate(reply.get("tensors", [])):
            try:
                name = str(t["name"])
                dtype, shape = normalize(str(t["dtype"]), [int(x) for x in t["shape"]])
                if "sha256" in t:
                    sha, n = str(t["sha256"]).lower(), t.get("nbytes")
                else:
                    path = os.path.join(self.out_dir, os.path.basename(str(t["bytes_file"])))
                    sha, n = _sha_file(path)
            except (KeyError, TypeError, ValueError, OSError) as e:
                problems.append(f"tensor #{i} of the reply: {type(e).__name__}: {e}")
                continue
            order.append(name)
            described[name] = {"dtype": dtype, "shape": shape, "device": str(t.get("device", "cpu")),
                               "sha256": sha, "nbytes": n}
        return {"accepted": True, "tensors": described, "order": order, "problems": problems, "checks": {},
                "seconds": seconds}

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self._wait_or_kill()
        self._forget()
        self.proc.stdout.close()


def normalize(dtype: str, shape: list[int]) -> tuple[str, list[int]]:
    """A testee may name dtypes as the format does (``F32``, shape as in the
    file) or as torch does (``float32``, torch's shape); the judge uses torch's."""
    if dtype in TORCH_DTYPES:
        pack = _PACKED_LAST_DIM.get(dtype, 1)
        if pack != 1:
            if not shape or shape[-1] % pack:
                raise ValueError(f"{dtype} shape {shape}: last dimension not a multiple of {pack}")
            shape = shape[:-1] + [shape[-1] // pack]
        return TORCH_DTYPES[dtype], shape
    if dtype in _TORCH_NAMES:
        return dtype, shape
    return dtype, shape  # unknown: reported as a dtype mismatch by the judge


def _sha_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n
