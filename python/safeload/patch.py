"""``safeload.patch()``: route upstream's loading functions through safeload.

While a patch is in force, these calls go to safeload:

- ``safetensors.safe_open(...)`` (for ``framework="pt"``/``"torch"``; other
  frameworks still get upstream's object) -> a :class:`safeload.safe_open`;
- ``safetensors.torch.load_file(...)`` -> :func:`safeload.load_file`;
- ``safetensors.torch.load(...)`` -> :func:`safeload.load`;
- ``safetensors.torch.load_model(...)``: upstream's, which calls
  ``load_file`` and so loads through safeload.

The objects themselves are routed, not the names bound to them: upstream's
``safe_open`` class gets safeload's constructor (its C slot, swapped by
``_C.interpose_new``), and ``load_file`` and ``load`` run safeload's code
(their ``__code__``). So every name bound to them reaches safeload, whatever
holds it and whenever it was bound: ``from safetensors import safe_open`` in
transformers, accelerate or diffusers before or during the patch, a class
attribute, a closure. Applying or undoing a patch swaps three things, at a
cost that does not grow with the modules loaded; ``unpatch()`` gives the
objects their own constructor and code back.

Use it as a context manager or as a plain call::

    with safeload.patch() as p:
        model = AutoModelForCausalLM.from_pretrained(path)
    print(p.calls)          # {"safe_open": 2, "tensors": 291, ...}

    safeload.patch()        # until
    safeload.unpatch()      # undoes every patch() still in force

Patches nest: the originals come back when the outermost ``with`` block ends
(or at ``unpatch()``). ``p.calls`` counts what safeload served while ``p``
was in force: files opened with ``safe_open``, tensors handed out by those
handles, ``load_file`` and ``load`` calls, and ``mapped``: the files served
by upstream's mapping instead (below); :func:`calls` counts since the
process started.

Reading from the start: transformers' and diffusers' ``from_pretrained``
(``PreTrainedModel`` and ``ModelMixin``, now or when their modules are
imported while the patch is in force) are wrapped too. Given a local
directory holding the checkpoint under the library's own file names
(``model.safetensors`` or its index; ``diffusion_pytorch_model...``), for
the CPU (no ``device_map`` but ``"cpu"``) and with none of the options that
read other files or read differently (``variant``, ``gguf_file``,
``state_dict``, ``use_safetensors=False``, ``disable_mmap``,
``quantization_config``, ``tp_plan``, ...), the wrapper starts reading at
once, while the library builds the model, every shard file that the patched
``safe_open`` would read rather than map (below), and the library's
``safe_open`` and ``load_file`` calls take those files from that load
(``safe_open.preloading``); what was not taken is freed when the call
returns. Counted as ``preloaded``. The shard files it finds in the page
cache are not measured again by the library's calls during it.

Never slower than upstream: where the caller asked for a mapping (upstream's
default ``backend="mmap"``), the tensors go to the CPU, and the page cache
holds the file but for scattered pages (95% of its pages), upstream's
own ``safe_open``/``load_file`` serve it: a mapping hands out the page
cache's pages, while any read must first write every destination page anew,
which a warm load cannot win (``fast::serve_by_mapping`` in C++ decides; see
the README's numbers). Everywhere else (a cold file, another device,
``backend="pread"``) safeload reads.
"""
from __future__ import annotations

import collections
import threading
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

from safeload import _autopatch

__all__ = ["patch", "unpatch", "is_patched", "calls"]

_lock = threading.RLock()
_depth = 0
_generation = 0  # bumped by unpatch(), so handles from before it release nothing
_originals: Dict[str, Any] = {}        # route -> upstream object, captured at the first patch
_replacements: Dict[str, Callable] = {}  # route -> what serves its calls while patched
_own_code: Dict[str, Tuple[types.CodeType, Any, Any]] = {}  # route -> a function's code and defaults
_counts: "collections.Counter[str]" = collections.Counter()


def _count(what: str, n: int = 1) -> None:
    with _lock:
        _counts[what] += n


def calls() -> Dict[str, int]:
    """What safeload served through patched names since the process
    started: ``safe_open`` (files opened), ``tensors`` (tensors those handles
    handed out), ``load_file``, ``load``."""
    with _lock:
        return dict(_counts)


def is_patched() -> bool:
    """Whether a patch is in force."""
    return _depth > 0


# -- the replacements ---------------------------------------------------------

def _make_replacements(originals: Dict[str, Any]) -> Dict[str, Any]:
    import safeload
    from safeload.safe_open import offered

    from safeload import _C

    upstream_type = originals["safe_open"]

    def upstream_safe_open(*args, **kwargs):
        return _C.upstream_new(upstream_type, *args, **kwargs)

    def safe_open(filename, framework, device="cpu", *, backend="mmap", **kwargs):
        """``safetensors.safe_open``, routed through ``safeload.safe_open`` for
        torch (see ``safeload.patch``)."""
        if framework not in ("pt", "torch") or (not offered(filename)
                                                 and _mapping_serves(filename, device, backend, kwargs)):
            return upstream_safe_open(filename, framework, device, backend=backend, **kwargs)
        handle = safeload.safe_open(filename, framework, device, backend=backend, **kwargs)
        _count("safe_open")
        handle.on_tensor = lambda name: _count("tensors")
        return handle

    def load_file(filename, device="cpu", *, backend="mmap", **kwargs):
        """``safetensors.torch.load_file``, routed through ``safeload.load_file``."""
        preloaded = _take_preloaded(filename, device, kwargs)
        if preloaded is not None:
            _count("load_file")
            _count("tensors", len(preloaded))
            return preloaded
        if _mapping_serves(filename, device, backend, kwargs):
            # What upstream's load_file does, on its own safe_open (not the patched name).
            with upstream_safe_open(filename, framework="pt", device=device, backend=backend) as f:
                return f.get_tensors()
        result = safeload.load_file(filename, device, backend=backend, **kwargs)
        _count("load_file")
        _count("tensors", len(result))
        return result

    def load(data, *args, **kwargs):
        """``safetensors.torch.load``, routed through ``safeload.load``."""
        result = safeload.load(data, *args, **kwargs)
        _count("load")
        _count("tensors", len(result))
        return result

    return {"safe_open": safe_open, "load_file": load_file, "load": load}


# The code upstream's functions run while patched (their own is kept in _own_code): no free
# variables, so it fits any function; it finds this module through sys.modules.
def _load_file_code(filename, device="cpu", *, backend="mmap", **kwargs):
    return __import__("sys").modules["safeload.patch"]._replacements["load_file"](
        filename, device, backend=backend, **kwargs)


def _load_code(data, *args, **kwargs):
    return __import__("sys").modules["safeload.patch"]._replacements["load"](data, *args, **kwargs)


_ROUTED_CODE = {"load_file": _load_file_code, "load": _load_code}


def _route(name: str) -> None:
    """Has upstream's ``name`` serve its calls by safeload's replacement."""
    original = _originals[name]
    if isinstance(original, type):
        from safeload import _C

        _C.interpose_new(original, _replacements[name])
        return
    code = _ROUTED_CODE[name]
    if original.__code__ is code.__code__:
        return
    _own_code[name] = (original.__code__, original.__defaults__, original.__kwdefaults__)
    original.__code__, original.__defaults__, original.__kwdefaults__ = (
        code.__code__, code.__defaults__, code.__kwdefaults__)


def _unroute(name: str) -> None:
    """Gives upstream's ``name`` its own constructor or code back."""
    original = _originals[name]
    if isinstance(original, type):
        from safeload import _C

        _C.restore_new(original)
        return
    saved = _own_code.pop(name, None)
    if saved is not None:
        original.__code__, original.__defaults__, original.__kwdefaults__ = saved


def _mapping_serves(filename, device, backend, kwargs: dict) -> bool:
    """Whether upstream's mapping should serve this call (see the module docstring); counted
    as ``mapped``. Only for arguments upstream takes: with safeload's own options, or where
    the file cannot be opened (safeload then raises its own error), safeload serves it. A file
    a from_pretrained call under way found in the page cache is not measured again."""
    from safeload import _C, _loading
    from safeload._device import device_string
    from safeload.safe_open import file_identity

    if kwargs:
        return False
    try:
        host = device_string(device) == "cpu"
        # The file is opened only where its residency can decide; nothing of it is parsed.
        if not _C.serve_by_mapping(backend, host, 1.0):
            return False
        if _found_mapped and file_identity(filename) in _found_mapped:
            serves = True
        else:
            (fraction,) = _C.cached_fractions(_loading._sources([filename])[0])
            serves = bool(_C.serve_by_mapping(backend, host, fraction))
    except (OSError, ValueError, TypeError):  # SafetensorError is a ValueError
        return False
    if serves:
        _count("mapped")
    return serves


def _take_preloaded(filename, device, kwargs: dict) -> Optional[dict]:
    """``load_file``'s tensors from a preload holding the file (see the module docstring), or
    None."""
    from safeload import _C, _loading
    from safeload._device import device_string
    from safeload.safe_open import offered, take_preloaded

    if kwargs or not offered(filename):
        return None
    try:
        if device_string(device) != "cpu":
            return None
        checkpoint = _C.Checkpoint(_loading._sources([filename])[0], b"")
    except (OSError, ValueError):  # the file is safeload.load_file's to report on
        return None
    return take_preloaded(checkpoint)


#: The from_pretrained entries wrapped: (module, class, the checkpoint's one file, its index).
_FROM_PRETRAINED = (
    ("transformers.modeling_utils", "PreTrainedModel", "model.safetensors", "model.safetensors.index.json"),
    ("diffusers.models.modeling_utils", "ModelMixin", "diffusion_pytorch_model.safetensors",
     "diffusion_pytorch_model.safetensors.index.json"),
)
#: Arguments under which the library reads other files than the checkpoint's, reads it in
#: another way, or puts tensors elsewhere than the CPU: no preload.
_OTHER_READS = ("variant", "gguf_file", "state_dict", "from_tf", "from_flax", "disable_mmap", "quantization_config",
                "tp_plan", "device_mesh", "offload_folder", "offload_state_dict", "key_mapping", "weights_only")


def _preload_source(args: tuple, kwargs: dict, single: str, index: str) -> Optional[str]:
    """The checkpoint a from_pretrained call loads, where it is a local one to preload (see the
    module docstring): its index or its one file; else None."""
    import os

    path = kwargs.get("pretrained_model_name_or_path", args[0] if args else None)
    if not isinstance(path, (str, os.PathLike)) or len(args) > 1:
        return None
    if any(kwargs.get(k) not in (None, False) for k in _OTHER_READS) or kwargs.get("use_safetensors") is False:
        return None
    device_map = kwargs.get("device_map")
    if device_map is not None and str(device_map) != "cpu":
        return None
    directory = os.path.join(os.fspath(path), kwargs.get("subfolder") or "")
    for name in (index, single):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _to_read(files: List[bytes]) -> List[bytes]:
    """Of these shard files, those the policy has safeload read for the CPU rather than map:
    the ones the patched ``safe_open`` and ``load_file`` would read."""
    from safeload import _C

    return [f for f, fraction in zip(files, _C.cached_fractions(files))
            if not _C.serve_by_mapping("mmap", True, fraction)]


#: (device, inode, size, mtime ns) of the shard files that from_pretrained calls under way found
#: in the page cache -> how many such calls: their patched safe_open and load_file calls are
#: mapped without measuring the files again.
#: A plain dict, counted by hand: Counter.update and Counter(...) ask whether their argument
#: is a Mapping, and with transformers loaded that ABC check walked hundreds of classes
#: (5-11 ms at the first warm from_pretrained of a fresh process).
_found_mapped: Dict[tuple, int] = {}


def _shard_files(source: str) -> Optional[List[bytes]]:
    """The shard files of a from_pretrained checkpoint (its index or its one file), as the
    core's ``resolve_checkpoint`` names them; None for an index the core refuses for its
    names: none, one that is not a string, or one outside its directory (the library then
    reports on it as it would unpatched).

    Read with Python's json, not the core's reader: this runs on every patched
    from_pretrained, a warm one included, and the library reads the same index with json
    next, while the core's reader, whose code nothing else has run yet in such a process,
    took milliseconds longer at its first call (measured in the README)."""
    import json
    import os

    raw = os.fsencode(source)
    if not raw.endswith(b".json"):
        return [raw]
    with open(raw, "rb") as f:
        document = json.load(f)
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    names = list(weight_map.values()) if isinstance(weight_map, dict) else []
    if not all(isinstance(n, str) for n in names):
        return None
    names = set(names)  # a name per tensor; one per shard from here
    if not names or not all(n and not n.startswith("/") and ".." not in n.split("/") for n in names):
        return None
    directory = os.path.dirname(raw)
    return sorted(os.path.join(directory, os.fsencode(n)) for n in names)


def _preload(source: Optional[str]):
    """Starts the preload of the shard files of ``source`` that are not in the page cache (all
    or most of their pages), and notes the others as found there; returns the function that
    withdraws both, or None."""
    from safeload import _C
    from safeload.safe_open import file_identity, preloading

    if source is None:
        return None
    try:
        files = _shard_files(source)
        if files is None:
            return None
        to_read = _to_read(files)
        withdraw = preloading(_C.Checkpoint(to_read, b"")) if to_read else None
    except (OSError, ValueError, RecursionError):
        # The library reports on its checkpoint as it would unpatched.
        return None
    if withdraw is not None:
        _count("preloaded")
    found = [key for key in map(file_identity, set(files) - set(to_read)) if key is not None]
    with _lock:
        for key in found:
            _found_mapped[key] = _found_mapped.get(key, 0) + 1

    def end() -> None:
        with _lock:
            for key in found:
                left = _found_mapped.pop(key) - 1
                if left:
                    _found_mapped[key] = left
        if withdraw is not None:
            withdraw()
    return end


def _wrap_from_pretrained(function, single: str, index: str):
    import functools

    @functools.wraps(function)
    def from_pretrained(cls, *args, **kwargs):
        withdraw = _preload(_preload_source(args, kwargs, single, index))
        try:
            return function(cls, *args, **kwargs)
        finally:
            if withdraw is not None:
                withdraw()
    from_pretrained.__safeload_patch__ = True
    return from_pretrained


# (class, the classmethod replaced), to put back at the undo.
_restore_classes: List[Tuple[Any, Any]] = []


def _wrap_classes() -> None:
    import sys

    if not _autopatch.installed(__name__):  # modules imported while patched: wrapped then
        modules = {entry[0]: _wrap_if_patched for entry in _FROM_PRETRAINED}
        sys.meta_path.insert(0, _autopatch.AfterImport(modules, __name__))
    for module_name, class_name, single, index in _FROM_PRETRAINED:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        original = vars(cls).get("from_pretrained") if isinstance(cls, type) else None
        if not isinstance(original, classmethod) or getattr(original.__func__, "__safeload_patch__", False):
            continue
        cls.from_pretrained = classmethod(_wrap_from_pretrained(original.__func__, single, index))
        _restore_classes.append((cls, original))


def _wrap_if_patched() -> None:
    if _depth > 0:
        _wrap_classes()


def _unwrap_classes() -> None:
    import sys

    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "owner", None) != __name__]
    for cls, original in reversed(_restore_classes):
        cls.from_pretrained = original
    _restore_classes.clear()


def _capture_originals() -> Dict[str, Any]:
    import importlib

    # By module, not attribute: from the SAFELOAD_PATCH hook this runs while
    # safetensors.torch is still being imported, before its parent has the
    # attribute.
    upstream = importlib.import_module("safetensors")
    upstream_torch = importlib.import_module("safetensors.torch")
    return {"safe_open": upstream.safe_open, "load_file": upstream_torch.load_file,
            "load": upstream_torch.load}


def _routes() -> None:
    """Captures upstream's objects and makes safeload's replacements, once."""
    global _originals, _replacements
    if not _originals:
        _originals = _capture_originals()
        _replacements = _make_replacements(_originals)


def _apply() -> None:
    _routes()
    for name in _originals:
        _route(name)
    _wrap_classes()


def _undo() -> None:
    _unwrap_classes()
    for name in _originals:
        _unroute(name)


class Patch:
    """What :func:`patch` returns: a context manager that releases this
    patch on exit; ``calls`` counts what safeload served while it was in
    force."""

    def __init__(self) -> None:
        self._start = calls()
        self._end: Optional[Dict[str, int]] = None
        self._active = True
        self._generation = _generation

    @property
    def calls(self) -> Dict[str, int]:
        now = self._end if self._end is not None else calls()
        return {k: v - self._start.get(k, 0) for k, v in now.items() if v - self._start.get(k, 0)}

    def release(self) -> None:
        global _depth
        with _lock:
            if not self._active:
                return
            self._active = False
            self._end = calls()
            if _depth > 0 and self._generation == _generation:
                _depth -= 1
                if _depth == 0:
                    _undo()

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.release()

    def __repr__(self) -> str:
        live = self._active and self._generation == _generation and _depth
        return f"<safeload.patch {'in force' if live else 'released'}>"


def patch() -> Patch:
    """Routes ``safetensors.safe_open``, ``safetensors.torch.load_file``,
    ``load_model`` and ``load`` through safeload, in every module that holds
    them; see the module docstring."""
    global _depth
    with _lock:
        if _depth == 0:
            _apply()
        _depth += 1
        return Patch()


def unpatch() -> bool:
    """Undoes every ``patch()`` still in force; returns whether one was."""
    global _depth, _generation
    with _lock:
        if _depth == 0:
            return False
        _depth = 0
        _generation += 1
        _undo()
        return True

