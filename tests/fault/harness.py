"""Builds the fault shim and runs loads in subprocesses that preload it.

Used by tests/python/test_faults.py and test_robustness.py. Nothing here
imports safeload: the loads run in child processes, so a crash, an abort or
a hang fails one case instead of the test run.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_SOURCE = os.path.join(HERE, "fault_shim.c")
WORKER = os.path.join(HERE, "worker.py")

#: A longer sweep (more N, more files, more concurrency) when set to 1.
SWEEP = os.environ.get("SAFELOAD_FAULT_SWEEP", "") not in ("", "0")


class NoCompiler(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def build_shim() -> str:
    """Compiles fault_shim.c once per test run; returns the library's path.
    Raises NoCompiler when no C compiler is available or it fails."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise NoCompiler("no C compiler (cc, gcc or clang) on PATH")
    out_dir = tempfile.mkdtemp(prefix="safeload-fault-shim-")
    out = os.path.join(out_dir, "fault_shim.so")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", out, SHIM_SOURCE, "-ldl"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise NoCompiler(f"{cc} could not build the fault shim:\n{proc.stderr}")
    return out


def child_env(shim: str | None = None, extra: dict | None = None) -> dict:
    """The environment of a child Python: this process's package path first,
    the shim preloaded when given, no inherited fault spec."""
    import safeload  # only for where the package lives

    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(safeload.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package_root, HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("SAFELOAD_FAULT", None)
    if shim:
        env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    if extra:
        env.update(extra)
    return env


def run_cases(shim: str, cases: list[dict], timeout: float = 300, max_restarts: int = 4) -> dict:
    """Runs ``cases`` (see worker.py) in a worker with the shim preloaded;
    returns ``{id: result}``. A case during which the worker died gets
    ``{"outcome": "crash", ...}``, one during which it hung ``"hang"``; the
    worker is restarted for the cases after it (at most ``max_restarts``
    times; the rest get ``"not run"``)."""
    results: dict = {}
    pending = list(cases)
    restarts = 0
    while pending:
        try:
            proc = subprocess.run([sys.executable, WORKER], input=json.dumps(pending), capture_output=True,
                                  text=True, timeout=timeout, env=child_env(shim))
            stdout, stderr, rc, hung = proc.stdout, proc.stderr, proc.returncode, False
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            rc, hung = None, True
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                res = json.loads(line[len("RESULT "):])
                results[res["id"]] = res
        started = [line[len("START "):] for line in stderr.splitlines() if line.startswith("START ")]
        pending = [c for c in pending if c["id"] not in results]
        if not pending:
            break
        culprit = started[-1] if started and started[-1] not in results else pending[0]["id"]
        results[culprit] = {"outcome": "hang" if hung else "crash", "rc": rc, "stderr": stderr[-4000:]}
        pending = [c for c in pending if c["id"] != culprit]
        restarts += 1
        if restarts > max_restarts:
            for c in pending:
                results[c["id"]] = {"outcome": "not run", "stderr": stderr[-2000:]}
            break
    return results


def run_script(script: str, *, shim: str | None = None, timeout: float = 60, args=(),
               extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a Python snippet in a child process (raises TimeoutExpired on a hang)."""
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env(shim, extra_env))


def last_json(stdout: str) -> dict:
    """The last line of a child's stdout that starts with 'JSON '."""
    lines = [line for line in stdout.splitlines() if line.startswith("JSON ")]
    assert lines, f"the child printed no result:\n{stdout[-2000:]}"
    return json.loads(lines[-1][len("JSON "):])


def digest(value) -> dict:
    """What a load returned, comparable across processes: per tensor its
    dtype, shape and a hash of its bytes (and the key order); a header as JSON."""
    import hashlib

    import torch

    if isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
        out = {}
        for name, t in value.items():
            t = t.contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            out[name] = [str(t.dtype), list(t.shape), hashlib.sha256(raw).hexdigest()]
        return {"tensors": out, "keys": list(value)}
    return {"header": json.loads(json.dumps(value))}
