"""The constructor routing that safeload.patch() puts on upstream's ``safe_open``, checked
against upstream's real class under the running Python: how the interpreter specialises calls
and caches type lookups changes from version to version, and the package's own tests run
under one version only.

    python check.py MODULE      (MODULE: _interpose_probe, or safeload._C)

Needs safetensors and numpy. The oracle is upstream itself: what its unrouted class returns
and raises for the same file, written by upstream's numpy writer.
"""
import gc
import importlib
import os
import sys
import tempfile

import numpy as np
import safetensors
import safetensors.numpy
from safetensors import safe_open as bound_before  # as a library binds it at import

probe = importlib.import_module(sys.argv[1])
upstream = safetensors.safe_open
checks = []


def check(what, ok):
    checks.append(what)
    if not ok:
        raise SystemExit(f"FAILED under Python {sys.version.split()[0]}: {what}")


class Holder:
    opener = safetensors.safe_open


def closure(opener=safetensors.safe_open):
    return lambda *a, **k: opener(*a, **k)


def at_one_site(*args, **kwargs):
    return safetensors.safe_open(*args, **kwargs)  # one call site, specialised after a few calls


def route(*args, **kwargs):
    return ("routed", args, kwargs)


def sites():
    return {"module attribute": safetensors.safe_open, "bound before": bound_before,
            "class attribute": Holder.opener, "closure": closure(), "one site": at_one_site}


def keys_and_tensor(handle):
    with handle as f:
        return f.keys(), f.get_tensor("w")


with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "t.safetensors")
    written = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, dtype=np.int8)}
    safetensors.numpy.save_file(written, path)
    bad = os.path.join(tmp, "bad.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")

    def upstream_outcome(call, *args, **kwargs):
        try:
            return ("made", type(call(*args, **kwargs)))
        except Exception as e:  # noqa: BLE001 - the class and message are compared
            return ("raised", type(e), str(e))

    for _ in range(200):  # let the interpreter specialise each site before the swap
        for site in sites().values():
            site(path, framework="numpy").keys()
    unrouted = {name: keys_and_tensor(site(path, "numpy")) for name, site in sites().items()}
    check("upstream reads what its writer wrote", all(
        keys == ["b", "w"] and np.array_equal(w, written["w"]) for keys, w in unrouted.values()))
    bad_outcome = upstream_outcome(upstream, bad, "numpy")
    check("upstream refuses a bad header", bad_outcome[0] == "raised")
    refs = sys.getrefcount(route)

    for _ in range(2):  # routed, restored, and the same again
        probe.interpose_new(upstream, route)
        probe.interpose_new(upstream, route)  # twice: still one route, the original kept
        for name, site in sites().items():
            for _ in range(50):
                got = site(path, framework="numpy", device="cpu")
            check(f"routed at the {name}", got == ("routed", (path,), {"framework": "numpy", "device": "cpu"}))
        check("routed through the class's own __new__",
              upstream.__new__(upstream, path, "numpy")[0] == "routed")
        made = probe.upstream_new(upstream, path, "numpy")
        check("upstream_new makes upstream's object while routed",
              type(made) is upstream and isinstance(made, safetensors.safe_open))
        keys, w = keys_and_tensor(made)
        check("upstream_new's object reads the file", keys == ["b", "w"] and np.array_equal(w, written["w"]))
        check("upstream_new raises upstream's error",
              upstream_outcome(lambda *a: probe.upstream_new(upstream, *a), bad, "numpy") == bad_outcome)

        def failing(*args, **kwargs):
            raise LookupError("from the route")

        probe.interpose_new(upstream, failing)
        try:
            at_one_site(path, "numpy")
            check("a route's exception reaches the caller", False)
        except LookupError as e:
            check("a route's exception reaches the caller", str(e) == "from the route")
        probe.interpose_new(upstream, route)

        probe.restore_new(upstream)
        probe.restore_new(upstream)  # twice: no effect
        for name, site in sites().items():
            for _ in range(50):
                got = site(path, framework="numpy")
            check(f"upstream's own again at the {name}", type(got) is upstream)
            check(f"upstream's object reads the file at the {name}",
                  keys_and_tensor(site(path, "numpy"))[0] == unrouted[name][0])
        check("upstream's own error again", upstream_outcome(upstream, bad, "numpy") == bad_outcome)

    gc.collect()
    check("no reference to the route left behind", sys.getrefcount(route) == refs)
    try:
        probe.interpose_new(type, route)
        check("the metatype is refused", False)
    except TypeError:
        check("the metatype is refused", True)

print(f"constructor routing under Python {sys.version.split()[0]}, safetensors {safetensors.__version__}: "
      f"{len(checks)} checks passed")
