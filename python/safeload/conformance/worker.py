"""The worker process: imports the loader once, then serves requests one at a
time and reports what it observed. It judges nothing that needs the case's
expectation (the parent does); it only measures, so a loader that crashes or
hangs takes down this process and never the harness.

Protocol: one JSON object per line on two private pipes (file descriptors
given on the command line, so a loader printing to stdout cannot corrupt it).
The worker first sends ``{"ready": true, "surfaces": [...]}`` (the surfaces the
testee offers, see :func:`resolve_surfaces`) or ``{"ready": false, "error": ...}``;
then for each request it sends one reply:

- ``{"op": "load", "surface", "path", "device", "ownership", "sha256"}``: an
  observation (see :func:`observe`) of a load through ``surface``: ``load_file``,
  ``load`` (the file's bytes) or ``safe_open`` (every tensor by ``get_tensor``);
- ``{"op": "independence", "surface", "path", "device"}``: the loader's result
  described only after its file was replaced and unlinked (see
  :func:`observe_independent`);
- ``{"op": "threads", "surface", "paths", "device", "threads", "rounds"}``: each
  file loaded alone, then from several threads at once (see :func:`observe_threads`);
- ``{"op": "open", "path", "device", "sha256"}``: what a ``safe_open`` handle
  says of the file (see :func:`observe_open`);
- ``{"op": "slices", "path", "device", "ops"}``: ``get_slice(name)[index]`` per op
  (see :func:`observe_slices`);
- ``{"op": "prefetch", "path", "device", "plan"}``: ``prefetch(plan)`` (see
  :func:`observe_prefetch`).
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from safeload._bytes import byte_view

Loader = Callable[[str, str], Mapping[str, Any]]

# Named properties of returned tensors, checked on every valid case. The
# parent reports a failure as "[name] detail", so a user sees which one broke.
CONTIGUOUS = "contiguous"
REQUIRES_GRAD = "requires_grad"
ALIASING = "aliasing"            # two returned tensors share memory
FILE_WRITES = "file_writes"      # writing into a tensor reaches the file
WRITABLE = "writable"            # a tensor cannot be written, or writes do not stick
INDEPENDENCE = "file_independence"  # tensors change once the file is replaced
PROPERTY_CHECKS = (CONTIGUOUS, REQUIRES_GRAD, ALIASING, FILE_WRITES, WRITABLE)


def _import(module_part: str):
    """A dotted module name, or a path to a ``.py`` file."""
    if module_part.endswith(".py") or os.sep in module_part:
        path = os.path.abspath(module_part)
        name = "_conform_loader_" + hashlib.sha256(path.encode()).hexdigest()[:12]
        mspec = importlib.util.spec_from_file_location(name, path)
        if mspec is None or mspec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        mspec.loader.exec_module(module)
        return module
    return importlib.import_module(module_part)


def resolve_loader(spec: str) -> Loader:
    """``MODULE:FUNC`` where MODULE is a dotted module name or a path to a
    ``.py`` file; FUNC may be dotted (``Class.method``)."""
    module_part, sep, func_part = spec.rpartition(":")
    if not sep or not module_part or not func_part:
        raise ValueError(f"loader {spec!r} must be MODULE:FUNC (MODULE may be a path to a .py file)")
    obj: Any = _import(module_part)
    for part in func_part.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def is_module_spec(spec: str) -> bool:
    """A module (every surface it defines) rather than ``MODULE:FUNC`` (load_file only)."""
    head, sep, tail = spec.rpartition(":")
    return not sep or not head or os.sep in tail or tail.endswith(".py")


SURFACES = ("load_file", "load", "safe_open")


def resolve_surfaces(spec: str) -> dict[str, Callable[..., Any]]:
    """The surfaces a testee offers: ``MODULE:FUNC`` is ``load_file`` alone; a ``MODULE``
    offers each of ``load_file(path, device)``, ``load(data, device)`` and
    ``safe_open(path, framework, device=...)`` it defines."""
    if not is_module_spec(spec):
        return {"load_file": resolve_loader(spec)}
    module = _import(spec)
    found = {name: getattr(module, name) for name in SURFACES if callable(getattr(module, name, None))}
    if not found:
        raise TypeError(f"module {spec} defines none of {', '.join(SURFACES)}")
    return found


def surface_devices(spec: str) -> dict[str, list[str]]:
    """A module's own word on where a surface runs (``SURFACE_DEVICES = {"prefetch":
    ("cuda",)}``: upstream's prefetch loads to CUDA alone), so that the harness reports the
    surface as not run elsewhere rather than failed."""
    if not is_module_spec(spec):
        return {}
    declared = getattr(_import(spec), "SURFACE_DEVICES", {}) or {}
    return {str(k): [str(d) for d in v] for k, v in dict(declared).items()}


def _safe_open_all(safe_open: Callable[..., Any]) -> Loader:
    """A load through ``safe_open``: every tensor by ``get_tensor``, in data order, handle closed."""
    def load(path: str, device: str) -> dict[str, Any]:
        handle = safe_open(path, "pt", device=device)
        with _opened(handle) as f:
            names = f.offset_keys() if hasattr(f, "offset_keys") else f.keys()
            return {name: f.get_tensor(name) for name in names}
    return load


def _load_bytes(load: Callable[..., Any]) -> Loader:
    """A load through ``load(data, device)``: the file's bytes read first, then handed over."""
    def load_file(path: str, device: str) -> Any:
        with open(path, "rb") as f:
            data = f.read()
        return load(data, device)
    return load_file


class _opened:
    """``with`` over a safe_open handle, closing it whether or not it is a context manager."""

    def __init__(self, handle: Any):
        self.handle = handle

    def __enter__(self) -> Any:
        return self.handle.__enter__() if hasattr(self.handle, "__enter__") else self.handle

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self.handle, "__exit__"):
            self.handle.__exit__(*exc)
        elif hasattr(self.handle, "close"):
            self.handle.close()


def loader_for(surfaces: dict[str, Callable[..., Any]], surface: str) -> Loader:
    """The ``(path, device) -> tensors`` view of a surface, for the load and named checks."""
    if surface == "load_file":
        return surfaces["load_file"]
    if surface == "load":
        return _load_bytes(surfaces["load"])
    if surface == "safe_open":
        return _safe_open_all(surfaces["safe_open"])
    raise KeyError(surface)


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_DIGEST_CHUNK = 64 << 20


def digest(t) -> tuple[str, int]:
    """SHA-256 and length of the tensor's bytes in logical (row-major) order,
    read on the CPU in bounded chunks (a 4 GiB tensor is never copied whole)."""
    h = hashlib.sha256()
    if t.numel() == 0:
        return h.hexdigest(), 0
    # One dimension, then dense: a tensor can be "contiguous" with odd strides on dimensions
    # of size 1 (an index with None), and its elements are then not one run of storage.
    t = t.detach().reshape(-1)
    if not t.is_contiguous():
        t = t.contiguous()
    view = byte_view(t)
    n = view.numel()
    for start in range(0, n, _DIGEST_CHUNK):
        part = view[start:start + _DIGEST_CHUNK]
        if part.device.type != "cpu":
            part = part.cpu()
        h.update(memoryview(part.numpy()))
    return h.hexdigest(), n


def _ownership(tensors: Mapping[str, Any], path: str, file_sha: str) -> dict[str, list[str]]:
    """Writes a distinct pseudo-random pattern into every non-empty tensor,
    then checks each still holds its own pattern (no two share memory, writes
    stick) and that the file on disk did not change."""
    import torch

    checks: dict[str, list[str]] = {}
    patterns: dict[str, Any] = {}
    views: dict[str, Any] = {}
    for i, (name, t) in enumerate(tensors.items()):
        if t.numel() == 0 or not t.is_contiguous():
            continue  # a non-contiguous tensor is reported by its own check
        try:
            view = byte_view(t.detach())
            g = torch.Generator().manual_seed(0x5AFE + i)
            pattern = torch.randint(0, 256, (view.numel(),), dtype=torch.uint8, generator=g)
            view.copy_(pattern.to(view.device))
        except Exception as e:  # read-only or exotic storage
            checks.setdefault(WRITABLE, []).append(f"{name!r}: writing into the tensor failed: {type(e).__name__}: {e}")
            continue
        views[name], patterns[name] = view, pattern
    for name, view in views.items():
        if not torch.equal(view.cpu(), patterns[name]):
            checks.setdefault(ALIASING, []).append(
                f"{name!r}: after writing into every returned tensor its bytes are not what was written into it "
                "(its memory is shared with another returned tensor, or writes do not stick)"
            )
    if _file_sha256(path) != file_sha:
        checks.setdefault(FILE_WRITES, []).append(
            "writing into the returned tensors changed the file on disk (tensors alias a shared mapping of the file)")
    return checks


def _error(e: BaseException, t0: float) -> dict[str, Any]:
    code = getattr(e, "code", None)
    return dict(
        accepted=False,
        error_type=f"{type(e).__module__}.{type(e).__qualname__}",
        error_code=code if isinstance(code, str) else None,
        error=str(e)[:500],
        error_mro=[f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__],
        seconds=time.perf_counter() - t0,
    )


def describe(result: Any) -> tuple[dict[str, Any], dict[str, Any], list[str], dict[str, list[str]]]:
    """(described, tensors, problems, property checks) of a loader's result."""
    import torch

    problems: list[str] = []
    checks: dict[str, list[str]] = {}
    tensors: dict[str, Any] = {}
    described: dict[str, Any] = {}
    if not isinstance(result, Mapping):
        problems.append(f"returned a {type(result).__name__}, not a mapping")
        return described, tensors, problems, checks
    for name, t in result.items():
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name!r}: value is a {type(t).__name__}, not a torch.Tensor")
            continue
        try:
            sha, n = digest(t)
        except Exception as e:
            problems.append(f"{name!r}: cannot read the tensor's bytes: {type(e).__name__}: {e}")
            continue
        described[str(name)] = {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "device": str(t.device),
            "sha256": sha,
            "nbytes": n,
        }
        tensors[name] = t
        if not t.is_contiguous():
            checks.setdefault(CONTIGUOUS, []).append(
                f"{name!r}: not contiguous (strides {tuple(t.stride())} for shape {tuple(t.shape)})")
        if t.requires_grad:
            checks.setdefault(REQUIRES_GRAD, []).append(f"{name!r}: requires_grad=True (a loaded tensor must not track gradients)")
    return described, tensors, problems, checks


def observe(load: Loader, path: str, device: str, ownership: bool, file_sha: str | None) -> dict[str, Any]:
    """Run the loader on one file and describe what happened."""
    t0 = time.perf_counter()
    try:
        result = load(path, device)
    except BaseException as e:  # a loader may raise anything, SystemExit included
        return _error(e, t0)
    obs: dict[str, Any] = {"seconds": time.perf_counter() - t0, "accepted": True}
    described, tensors, problems, checks = describe(result)
    if ownership and file_sha is not None:
        for k, v in _ownership(tensors, path, file_sha).items():
            checks.setdefault(k, []).extend(v)
    obs["order"] = [str(k) for k in result] if isinstance(result, Mapping) else []
    obs["tensors"] = described
    obs["problems"] = problems
    obs["checks"] = checks
    return obs


def _qualname(e: BaseException) -> str:
    return f"{type(e).__module__}.{type(e).__qualname__}"


def _tensor_obs(t: Any) -> dict[str, Any]:
    sha, n = digest(t)
    return {"ok": True, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "device": str(t.device),
            "sha256": sha, "nbytes": n}


def _error_obs(e: BaseException) -> dict[str, Any]:
    return {"ok": False, "error_type": _qualname(e), "error": str(e)[:300],
            "error_mro": [f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__]}


def observe_open(safe_open: Callable[..., Any], path: str, device: str, file_sha: str | None) -> dict[str, Any]:
    """Everything a safe_open handle says of a file without slicing: keys, offset_keys,
    metadata, every tensor by get_tensor, get_tensors and get_tensor_meta where offered,
    get_slice's shape and dtype; then the ownership of what it handed out (distinct tensors
    must not share memory, writes must not reach the file). Whether a tensor asked for twice
    comes back sharing memory with the first is recorded, not judged."""
    t0 = time.perf_counter()
    try:
        handle = safe_open(path, "pt", device=device)
    except BaseException as e:
        return _error(e, t0)
    obs: dict[str, Any] = {"accepted": True, "offered": [], "checks": {}, "problems": []}
    held: dict[str, Any] = {}
    with _opened(handle) as f:
        for method in ("keys", "offset_keys", "metadata"):
            if not hasattr(f, method):
                continue
            obs["offered"].append(method)
            try:
                obs[method] = f.__getattribute__(method)()
            except BaseException as e:
                obs["problems"].append(f"{method}() raised {_qualname(e)}: {str(e)[:200]}")
        names = obs.get("offset_keys") or obs.get("keys") or []
        if isinstance(obs.get("metadata"), Mapping):
            obs["metadata"] = dict(obs["metadata"])
        obs["get_tensor"], obs["slice_info"] = {}, {}
        for name in names:
            try:
                t = f.get_tensor(name)
                obs["get_tensor"][name] = _tensor_obs(t)
                held[name] = t
            except BaseException as e:
                obs["get_tensor"][name] = {"error": f"{_qualname(e)}: {str(e)[:200]}"}
            try:
                sl = f.get_slice(name)
                obs["slice_info"][name] = {"shape": list(sl.get_shape()), "dtype": sl.get_dtype()}
            except BaseException as e:
                obs["slice_info"][name] = {"error": f"{_qualname(e)}: {str(e)[:200]}"}
        if hasattr(f, "get_tensors"):
            obs["offered"].append("get_tensors")
            try:
                obs["get_tensors"] = {str(k): _tensor_obs(v) for k, v in f.get_tensors().items()}
            except BaseException as e:
                obs["get_tensors"] = {}
                obs["problems"].append(f"get_tensors() raised {_qualname(e)}: {str(e)[:200]}")
        if hasattr(f, "get_tensor_meta"):
            obs["offered"].append("get_tensor_meta")
            obs["get_tensor_meta"] = {}
            for name in names:
                try:
                    m = f.get_tensor_meta(name)
                    obs["get_tensor_meta"][name] = {"dtype": m.dtype, "shape": list(m.shape),
                                                    "data_offsets": list(m.data_offsets)}
                except BaseException as e:
                    obs["get_tensor_meta"][name] = {"error": f"{_qualname(e)}: {str(e)[:200]}"}
        again = {}
        for name in names:
            try:
                again[name] = f.get_tensor(name)
            except BaseException:
                pass
    obs["seconds"] = time.perf_counter() - t0
    if file_sha is not None:
        for k, v in _ownership(held, path, file_sha).items():
            obs["checks"].setdefault(k, []).extend(v)
    obs["repeat_shares_memory"] = sorted(n for n, t in again.items()
                                         if n in held and t.numel() and _shares(t, held[n]))
    return obs


def _shares(a: Any, b: Any) -> bool:
    sa, sb = a.untyped_storage(), b.untyped_storage()
    a0 = sa.data_ptr() + a.storage_offset() * a.element_size()
    b0 = sb.data_ptr() + b.storage_offset() * b.element_size()
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def observe_slices(safe_open: Callable[..., Any], path: str, device: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    """``get_slice(name)[index]`` for each op, on one open handle: a tensor or the error raised."""
    from safeload.conformance import indexing

    t0 = time.perf_counter()
    try:
        handle = safe_open(path, "pt", device=device)
    except BaseException as e:
        return _error(e, t0)
    out = []
    with _opened(handle) as f:
        for op in ops:
            try:
                part = f.get_slice(op["name"])[indexing.decode(op["index"])]
                out.append(_tensor_obs(part))
            except BaseException as e:
                out.append(_error_obs(e))
    return {"accepted": True, "results": out, "seconds": time.perf_counter() - t0}


def observe_prefetch(safe_open: Callable[..., Any], path: str, device: str, plan: dict[str, Any]) -> dict[str, Any]:
    """``prefetch(plan)`` twice on one handle: the first loader is taken from tensor by
    tensor (then once more, and once for a tensor outside the plan), the second iterated."""
    t0 = time.perf_counter()
    try:
        handle = safe_open(path, "pt", device=device)
    except BaseException as e:
        return _error(e, t0)
    as_plan = {name: None if rows is None else slice(rows[0], rows[1]) for name, rows in plan.items()}
    obs: dict[str, Any] = {"accepted": True}
    with _opened(handle) as f:
        if not hasattr(f, "prefetch"):
            return {"accepted": True, "offered": False}
        obs["offered"] = True
        try:
            with f.prefetch(as_plan) as loader:
                obs["names"] = list(loader.names())
                obs["len"] = len(loader)
                obs["taken"] = {}
                for name in obs["names"]:
                    try:
                        obs["taken"][name] = _tensor_obs(loader.take(name))
                    except BaseException as e:
                        obs["taken"][name] = {"error": f"{_qualname(e)}: {str(e)[:200]}"}
                first = obs["names"][0] if obs["names"] else None
                obs["second_take_raises"] = True
                if first is not None:
                    try:
                        loader.take(first)
                        obs["second_take_raises"] = False
                    except Exception:
                        pass
                unplanned = [n for n in (f.offset_keys() if hasattr(f, "offset_keys") else f.keys()) if n not in plan]
                obs["unplanned_take_raises"] = True
                if unplanned:
                    try:
                        loader.take(unplanned[0])
                        obs["unplanned_take_raises"] = False
                    except Exception:
                        pass
            with f.prefetch(as_plan) as loader:
                obs["iterated"], repeats = {}, []
                for name, t in loader:
                    if name in obs["iterated"]:
                        repeats.append(name)
                    obs["iterated"][name] = _tensor_obs(t)
                obs["iterated_repeats"] = repeats
        except BaseException as e:
            return dict(_error(e, t0), during="prefetch")
    obs["seconds"] = time.perf_counter() - t0
    return obs


def replace_and_unlink(path: str) -> None:
    """Atomically replace ``path`` by a file of the same size whose every byte
    is inverted (what re-saving a checkpoint does), then unlink it."""
    import numpy as np

    tmp = path + ".replacement"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            dst.write(np.bitwise_not(np.frombuffer(chunk, dtype=np.uint8)).tobytes())
    os.replace(tmp, path)
    os.unlink(path)


def observe_independent(load: Loader, path: str, device: str) -> dict[str, Any]:
    """Load, then replace and unlink the file, and only then read the result:
    a loader whose tensors still depend on the file (lazy reads by path, a
    cache keyed by name) shows different bytes or fails here."""
    t0 = time.perf_counter()
    try:
        result = load(path, device)
    except BaseException as e:
        return _error(e, t0)
    replace_and_unlink(path)
    obs: dict[str, Any] = {"seconds": time.perf_counter() - t0, "accepted": True}
    try:
        described, _, problems, _ = describe(result)
    except BaseException as e:
        return dict(_error(e, t0), after_replace=True)
    obs.update(tensors=described, problems=problems, order=list(described), checks={})
    return obs


def _digests(result: Any) -> dict[str, Any]:
    described, _, problems, _ = describe(result)
    return {"tensors": {k: [v["dtype"], v["shape"], v["device"], v["sha256"]] for k, v in described.items()},
            "problems": problems}


def observe_threads(load: Loader, paths: list[str], device: str, threads: int, rounds: int) -> dict[str, Any]:
    """Load each file alone, then ``rounds`` times from ``threads`` threads at
    once (thread i loads file i mod len(paths), released together by a
    barrier); report every result that differs from the one given alone."""
    def one(path: str) -> dict[str, Any]:
        try:
            return _digests(load(path, device))
        except BaseException as e:
            return {"error": f"{type(e).__module__}.{type(e).__qualname__}: {str(e)[:200]}"}

    alone = {p: one(p) for p in paths}
    mismatches: list[str] = []
    for r in range(rounds):
        barrier = threading.Barrier(threads)
        got: dict[int, dict[str, Any]] = {}

        def run(i: int) -> None:
            barrier.wait()
            got[i] = one(paths[i % len(paths)])

        ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for i in range(threads):
            p = paths[i % len(paths)]
            if got.get(i) != alone[p]:
                mismatches.append(f"round {r}, thread {i}, {os.path.basename(p)}: {_diff(alone[p], got.get(i))}")
    return {"alone": {os.path.basename(p): ("error" not in v) for p, v in alone.items()}, "mismatches": mismatches}


def _diff(want: dict[str, Any], got: dict[str, Any] | None) -> str:
    if got is None:
        return "no result"
    if "error" in got and "error" not in want:
        return f"raised {got['error']} (alone it loads)"
    if "error" in want and "error" not in got:
        return f"loaded {len(got['tensors'])} tensors (alone it raises {want['error']})"
    if "error" in want:
        return f"raised {got['error']} (alone: {want['error']})"
    w, g = want["tensors"], got["tensors"]
    if set(w) != set(g):
        return f"tensor names {sorted(g)[:5]}, alone {sorted(w)[:5]}"
    bad = [k for k in w if w[k] != g[k]]
    return f"tensors {bad[:5]} differ from the result given alone (dtype, shape, device or bytes)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loader", required=True)
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    args = parser.parse_args(argv)
    rx = os.fdopen(args.in_fd, "r", encoding="utf-8")
    tx = os.fdopen(args.out_fd, "w", encoding="utf-8")

    def send(msg: dict[str, Any]) -> None:
        tx.write(json.dumps(msg) + "\n")
        tx.flush()

    try:
        import torch  # noqa: F401  (fail early, and before the clock starts on any case)

        surfaces = resolve_surfaces(args.loader)
    except BaseException as e:
        send({"ready": False, "error": f"{type(e).__name__}: {e}", "unavailable": _is_unavailable(e),
              "traceback": traceback.format_exc()[-4000:]})
        return 1
    send({"ready": True, "python": sys.executable, "surfaces": sorted(surfaces),
          "surface_devices": surface_devices(args.loader)})
    for line in rx:
        req = json.loads(line)
        op = req.get("op", "load")
        surface = req.get("surface", "load_file")
        if op in ("load", "independence", "threads") and surface not in surfaces:
            reply = {"accepted": False, "error_type": "unsupported", "error": f"the testee offers no {surface}"}
        elif op in ("open", "slices", "prefetch") and "safe_open" not in surfaces:
            reply = {"accepted": False, "error_type": "unsupported", "error": "the testee offers no safe_open"}
        elif op == "load":
            reply = observe(loader_for(surfaces, surface), req["path"], req["device"], req.get("ownership", True),
                            req.get("sha256"))
        elif op == "independence":
            reply = observe_independent(loader_for(surfaces, surface), req["path"], req["device"])
        elif op == "threads":
            reply = observe_threads(loader_for(surfaces, surface), req["paths"], req["device"], int(req["threads"]),
                                    int(req["rounds"]))
        elif op == "open":
            reply = observe_open(surfaces["safe_open"], req["path"], req["device"], req.get("sha256"))
        elif op == "slices":
            reply = observe_slices(surfaces["safe_open"], req["path"], req["device"], req["ops"])
        elif op == "prefetch":
            reply = observe_prefetch(surfaces["safe_open"], req["path"], req["device"], req["plan"])
        else:
            reply = {"accepted": False, "error_type": "protocol", "error": f"unknown op {op!r}"}
        gc.collect()  # what stays alive after this is the loader's, not the last result's
        _trim_allocator()  # and resident memory is what is held, not what malloc keeps free
        send(reply)
    return 0


def _trim_allocator() -> None:
    """Gives the C allocator's free memory back to the system (glibc's
    malloc_trim), so the leak check measures memory a loader holds, not free
    heap that fragmentation left resident. A no-op elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _is_unavailable(e: BaseException) -> bool:
    from safeload.conformance.adapters import AdapterUnavailable

    return isinstance(e, AdapterUnavailable)


if __name__ == "__main__":
    sys.exit(main())
