"""The surfaces beside ``load_file`` that models are loaded through, and their oracle.

A testee module may offer, each shaped as upstream's:

- ``load_file(path, device)``;
- ``load(data, device)``: the bytes of a file in memory;
- ``safe_open(path, framework, device=...)``: an object with ``keys()`` (sorted),
  ``offset_keys()`` (data order), ``metadata()`` (None without ``__metadata__``, ``{}`` for an
  empty one), ``get_tensor``, ``get_slice(name)`` (``get_shape()``, ``get_dtype()``,
  ``[index]``) and, where offered, upstream 0.9's ``get_tensors``, ``get_tensor_meta`` and
  ``prefetch(plan)``.

Each is judged against an oracle that never runs the code under test: the header as this
module parses it (``json``), and torch indexing of the tensor built from the file's bytes,
which the case's expectation (the SHA-256 of what the writer was given) vouches for.

F4 holds two values per byte; torch stores it as ``float4_e2m1fn_x2`` with the last
dimension halved, value ``2k`` in the low four bits of byte ``k``. An index applies to the
shape ``get_shape()`` gives, in values; the oracle unpacks the values, indexes them, and packs
the result two to a byte. A result whose last dimension is odd, or a single value, cannot be
packed: the oracle raises ValueError.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safeload.conformance import indexing
from safeload.conformance.cases import _PACKED_LAST_DIM, ACCEPT, TORCH_DTYPES, Case, ExpectedTensor
from safeload.conformance.judge import device_matches, expected_view
from safeload.conformance.worker import digest

SURFACES = ("load_file", "load", "safe_open")
# What each result reports as its surface.
RESULT_SURFACES = ("load_file", "load", "safe_open", "get_slice", "get_tensor_meta", "prefetch")


# --- the header, read without any loader ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Header:
    entries: dict[str, dict[str, Any]]  # name -> {"dtype", "shape", "data_offsets"}, in the header's order
    metadata: dict[str, str] | None
    data_start: int

    def offset_order(self) -> list[str]:
        return sorted(self.entries, key=lambda n: tuple(self.entries[n]["data_offsets"]))


def read_header(path: str) -> Header:
    """The header of a valid file, parsed with ``json`` (valid files only: the corpus and
    the writer vouch for them)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        doc = json.loads(f.read(n))
    metadata = doc.pop("__metadata__", None)
    return Header(doc, metadata, 8 + n)


def tensor_of(path: str, header: Header, name: str):
    """The tensor ``name`` as torch holds it, on the CPU, from the file's bytes."""
    import torch

    e = header.entries[name]
    start, end = e["data_offsets"]
    with open(path, "rb") as f:
        f.seek(header.data_start + start)
        raw = bytearray(f.read(end - start))
    dtype = getattr(torch, TORCH_DTYPES[e["dtype"]])
    shape = list(e["shape"])
    if e["dtype"] in _PACKED_LAST_DIM:
        shape[-1] //= _PACKED_LAST_DIM[e["dtype"]]
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)


# --- the index oracle -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Expected:
    """What ``get_slice(name)[index]`` must give: a tensor (torch dtype name, shape, SHA-256 of
    its bytes in row-major order) or an error of class ``error`` (qualified name)."""

    error: str | None = None
    dtype: str | None = None
    shape: list[int] | None = None
    sha256: str | None = None


def _digest(t) -> str:
    return digest(t)[0]


def _error(e: BaseException) -> Expected:
    return Expected(error=f"{type(e).__module__}.{type(e).__qualname__}")


def oracle(t, dtype: str, index: indexing.Index) -> Expected:
    """``get_slice(name)[index]`` of a tensor whose header dtype is ``dtype``, held by torch
    as ``t`` (see the module docstring for F4)."""
    import torch

    if dtype in _PACKED_LAST_DIM:
        return _packed_oracle(t, index)
    try:
        part = t[index]
    except (IndexError, TypeError, ValueError) as e:
        return _error(e)
    return Expected(dtype=str(part.dtype).removeprefix("torch."), shape=list(part.shape), sha256=_digest(part))


def _packed_oracle(t, index) -> Expected:
    import torch

    raw = t.view(torch.uint8) if t.numel() else torch.empty(t.shape, dtype=torch.uint8)
    values = torch.stack([raw & 0xF, raw >> 4], dim=-1).reshape(*t.shape[:-1], t.shape[-1] * 2)
    try:
        part = values[index]
    except (IndexError, TypeError, ValueError) as e:
        return _error(e)
    if part.dim() == 0 or part.shape[-1] % 2:
        return Expected(error="builtins.ValueError")  # an odd count of values does not fill bytes
    pairs = part.reshape(*part.shape[:-1], part.shape[-1] // 2, 2)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    return Expected(dtype="float4_e2m1fn_x2", shape=list(packed.shape), sha256=_digest(packed))


# --- the generated slice file ------------------------------------------------------------------

# Tensors every index is tried on (the structural cases) ...
_STRUCTURAL = [
    ("f32_1d", "F32", [9]), ("f32_2d", "F32", [6, 10]), ("f32_3d", "F32", [3, 4, 6]), ("f32_0d", "F32", []),
    ("f32_zero_rows", "F32", [0, 4]), ("f32_zero_cols", "F32", [5, 0]), ("bf16_3d", "BF16", [2, 5, 3]),
    ("f4_2d", "F4", [6, 10]), ("f4_3d", "F4", [2, 3, 8]),
]
# ... and a few indexes on a 2-D tensor of every other dtype.
_PER_DTYPE_INDEXES = [slice(1, 0), (slice(None), slice(3, 0, 3)), slice(-9, None), slice(None, None, 2), -1,
                      (Ellipsis, None), slice(3, 2, 2), (slice(None), slice(1, 4)), (1, 2)]


def slices_case(seed: int, directory: Path) -> tuple[Case, list[tuple[str, indexing.Index]]]:
    """The file ``get_slice`` is tried on, written from ``seed``, and its (tensor, index)
    pairs: the corner cases on the structural tensors, a few indexes on a tensor of every
    dtype torch has."""
    from safeload.testing.writer import Layout, TensorSpec, build

    specs = [TensorSpec.random(n, d, s, seed=f"{seed}:{n}") for n, d, s in _STRUCTURAL]
    per_dtype = []
    for dtype in TORCH_DTYPES:
        if dtype in ("F32", "BF16", "F4"):
            continue
        name = f"{dtype.lower()}_2d"
        specs.append(TensorSpec.random(name, dtype, [6, 10], seed=f"{seed}:{name}"))
        per_dtype.append(name)
    built = build(specs, Layout(metadata={"purpose": "slicing"}))
    name = f"g{seed}_slices"
    path = directory / f"{name}.safetensors"
    path.write_bytes(built.data)
    tensors = {t.name: ExpectedTensor(t.dtype, tuple(t.shape), hashlib.sha256(t.data).hexdigest(), len(t.data))
               for t in specs}
    case = Case(name, str(path), ACCEPT, "generated: a tensor of every dtype and shapes to slice",
                hashlib.sha256(built.data).hexdigest(), tensors, origin="generated")
    pairs = [(n, i) for n, _, s in _STRUCTURAL for i in indexing.corner_cases(s)]
    pairs += [(n, i) for n in per_dtype for i in _PER_DTYPE_INDEXES]
    return case, pairs


def selected(name: str, patterns: Sequence[str]) -> bool:
    """Whether a ``-k`` pattern names ``name``: the name itself (an index expression holds
    brackets, which a glob reads as a set), or a glob matching it."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def slice_case_name(file_case: str, tensor: str, index: indexing.Index) -> str:
    return f"get_slice:{file_case}:{tensor}{indexing.text(index)}"


def slice_reproducer(file_case: str, tensor: str, index: indexing.Index) -> str:
    """Python that reproduces one ``get_slice`` case (DEVICE stands for the device)."""
    seed = file_case.split("_", 1)[0].removeprefix("g")
    return (f"python -m safeload.conformance.generated --seed {seed} --out . (writes {file_case}.safetensors), then "
            f"with safe_open('{file_case}.safetensors', framework='pt', device=DEVICE) as f: "
            f"f.get_slice({tensor!r}){indexing.text(index)}")


# --- judging what a safe_open handle said -----------------------------------------------------------


def judge_slice(expected: Expected, obs: dict[str, Any], device: str) -> tuple[bool, str]:
    """(passed, detail) of one ``get_slice(name)[index]`` observation."""
    if expected.error is not None:
        if obs.get("ok"):
            return False, (f"returned a tensor of shape {obs['shape']} ({obs['dtype']}); torch indexing raises "
                           f"{expected.error.rsplit('.', 1)[-1]}")
        if expected.error in obs.get("error_mro", []):
            return True, f"raised {obs['error_type']}, as torch indexing does"
        return False, f"raised {obs['error_type']}: {obs.get('error', '')[:120]}; torch indexing raises " \
                      f"{expected.error.rsplit('.', 1)[-1]}"
    if not obs.get("ok"):
        return False, (f"raised {obs['error_type']}: {obs.get('error', '')[:120]}; torch indexing gives shape "
                       f"{expected.shape} ({expected.dtype})")
    wrong = []
    if obs["dtype"] != expected.dtype:
        wrong.append(f"dtype {obs['dtype']}, expected {expected.dtype}")
    if obs["shape"] != expected.shape:
        wrong.append(f"shape {obs['shape']}, expected {expected.shape}")
    elif obs["sha256"] != expected.sha256:
        wrong.append("values differ from torch indexing of the file's tensor")
    if not device_matches(obs.get("device", ""), device):
        wrong.append(f"on device {obs.get('device')}, expected {device}")
    return (not wrong), ("; ".join(wrong) if wrong else f"shape {obs['shape']}, values as torch indexing")


def judge_open(case: Case, header: Header, obs: dict[str, Any]) -> dict[str, list[str]]:
    """Check name -> problems, for what a safe_open handle said of the file as a whole and
    of each tensor: keys, offset_keys, metadata, get_tensor, get_tensors, get_slice's shape
    and dtype, and the ownership of what it handed out."""
    problems: dict[str, list[str]] = {}

    def bad(check: str, message: str) -> None:
        problems.setdefault(check, []).append(message)

    names = list(header.entries)
    if obs.get("keys") != sorted(names):
        bad("keys", f"keys() is {_short(obs.get('keys'))}, expected the names sorted: {_short(sorted(names))}")
    offset_keys = obs.get("offset_keys")
    if offset_keys is not None:
        ranges = [tuple(header.entries[n]["data_offsets"]) for n in offset_keys if n in header.entries]
        if sorted(offset_keys) != sorted(names) or ranges != sorted(ranges):
            bad("offset_keys", f"offset_keys() is {_short(offset_keys)}, expected the names in data order: "
                               f"{_short(header.offset_order())}")
    if obs.get("metadata", "missing") != header.metadata:
        want = "None (the header has no __metadata__)" if header.metadata is None else repr(header.metadata)
        bad("metadata", f"metadata() is {obs.get('metadata')!r}, expected {want}")
    want = expected_view(case)
    for name, got in (obs.get("get_tensor") or {}).items():
        _compare_tensor("get_tensor", name, want.get(name), got, bad)
    if obs.get("get_tensors") is not None:
        got_all = obs["get_tensors"]
        if sorted(got_all) != sorted(names):
            bad("get_tensors", f"get_tensors() has {_short(sorted(got_all))}, expected {_short(sorted(names))}")
        for name, got in got_all.items():
            _compare_tensor("get_tensors", name, want.get(name), got, bad)
    for name, info in (obs.get("slice_info") or {}).items():
        e = header.entries[name]
        if info.get("error"):
            bad("get_slice", f"get_slice({name!r}) raised {info['error']}")
            continue
        if info.get("shape") != list(e["shape"]):
            bad("get_slice", f"get_slice({name!r}).get_shape() is {info.get('shape')}, the header's is {e['shape']}")
        if info.get("dtype") != e["dtype"]:
            bad("get_slice", f"get_slice({name!r}).get_dtype() is {info.get('dtype')!r}, the header's is {e['dtype']!r}")
    for check, messages in (obs.get("checks") or {}).items():
        for m in messages:
            bad(check, m)
    for m in obs.get("problems", []):
        bad("result", m)
    return problems


def judge_meta(header: Header, obs: dict[str, Any]) -> list[str]:
    """Problems of ``get_tensor_meta`` against the header."""
    out = []
    for name, meta in (obs.get("get_tensor_meta") or {}).items():
        e = header.entries[name]
        if "error" in meta:
            out.append(f"get_tensor_meta({name!r}) raised {meta['error']}")
            continue
        want = {"dtype": e["dtype"], "shape": list(e["shape"]), "data_offsets": list(e["data_offsets"])}
        if meta != want:
            out.append(f"get_tensor_meta({name!r}) is {meta}, the header says {want}")
    return out


def _compare_tensor(check: str, name: str, want: dict[str, Any] | None, got: dict[str, Any], bad) -> None:
    if want is None:
        bad(check, f"{check}({name!r}) returned a tensor the file does not hold")
        return
    if "error" in got:
        bad(check, f"{check}({name!r}) raised {got['error']}")
        return
    for field in ("dtype", "shape", "sha256"):
        if got.get(field) != want[field]:
            what = "bytes differ from the file's" if field == "sha256" else f"{field} {got.get(field)}, expected {want[field]}"
            bad(check, f"{check}({name!r}): {what}")
            return


def _short(names: Any, n: int = 4) -> str:
    if not isinstance(names, list):
        return repr(names)
    shown = ", ".join(repr(x) for x in names[:n])
    return "[" + shown + (f", ... {len(names) - n} more" if len(names) > n else "") + "]"


# --- prefetch(plan) ----------------------------------------------------------------------------------


def prefetch_plan(header: Header) -> dict[str, Any]:
    """The plan a prefetch check asks for, JSON-ready: every other tensor of the file whole
    (``None``), and rows 1 to 4 of the first tensor of two or more dimensions and at least four
    rows; the rest is not planned."""
    plan: dict[str, Any] = {}
    sliced = False
    for i, name in enumerate(header.offset_order()):
        shape = header.entries[name]["shape"]
        if not sliced and len(shape) >= 2 and shape[0] >= 4 and header.entries[name]["dtype"] in TORCH_DTYPES:
            plan[name] = [1, 4]
            sliced = True
        elif i % 2 == 0 and header.entries[name]["dtype"] in TORCH_DTYPES:
            plan[name] = None
    return plan


def judge_prefetch(path: str, header: Header, plan: dict[str, Any], obs: dict[str, Any]) -> list[str]:
    """Problems of a prefetch observation: exactly the planned tensors and rows, each taken once."""
    out = []
    planned = [n for n in header.offset_order() if n in plan]
    if obs.get("names") != planned:
        out.append(f"names() is {_short(obs.get('names'))}, expected the planned names in file order: {_short(planned)}")
    if obs.get("len") != len(planned):
        out.append(f"len() is {obs.get('len')}, {len(planned)} tensors were planned")
    for name in planned:
        t = tensor_of(path, header, name)
        if plan[name] is not None:
            t = t[plan[name][0]:plan[name][1]]
        want = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "sha256": _digest(t)}
        got = (obs.get("taken") or {}).get(name)
        if got is None:
            out.append(f"take({name!r}) gave nothing")
        elif "error" in got:
            out.append(f"take({name!r}) raised {got['error']}")
        elif {k: got.get(k) for k in want} != want:
            rows = "" if plan[name] is None else f" rows {plan[name][0]}:{plan[name][1]}"
            out.append(f"take({name!r}){rows}: {got.get('dtype')} {got.get('shape')} differs from the file's "
                       f"{want['dtype']} {want['shape']}" + (" (bytes)" if got.get('shape') == want['shape'] else ""))
        iterated = (obs.get("iterated") or {}).get(name)
        if iterated is not None and iterated != got:
            out.append(f"iterating gave {name!r} differently from take()")
    if obs.get("iterated") is not None and sorted(obs["iterated"]) != sorted(planned):
        out.append(f"iterating gave {_short(sorted(obs['iterated']))}, expected each planned tensor once: "
                   f"{_short(planned)}")
    if obs.get("iterated_repeats"):
        out.append(f"iterating gave {obs['iterated_repeats']} twice")
    if not obs.get("second_take_raises"):
        out.append("a second take() of a tensor returned it again (each tensor is taken once)")
    if planned != list(header.entries) and not obs.get("unplanned_take_raises"):
        out.append("take() of a tensor not in the plan returned it")
    return out


# --- the cases of a run's surfaces -------------------------------------------------------------------

#: ``get_slice`` ops per request: a crash or hang fails a batch, whose ops are then run one by one.
SLICE_BATCH = 64


def surface_cases(cases: list[Case], offered: list[str], slices: tuple[Case, list] | None,
                  medium: Case | None, select: Sequence[str] = ()) -> list[Case]:
    """The requests that judge the surfaces beside ``load_file`` that a testee ``offered``:

    - ``load``: every corpus case through ``load(bytes)``, judged exactly as ``load_file``;
    - ``safe_open``: what a handle says of every valid file (``safe_open:CASE``; its
      ``get_tensor_meta`` is judged as ``get_tensor_meta:CASE``), ``get_slice`` over the slice
      file's (tensor, index) pairs in batches, and ``prefetch(plan)`` on the slice file and
      the medium file.

    With ``select`` (globs), the generated files' cases are kept only where a glob matches
    their name (a ``get_slice`` op's own name, or the file's)."""
    out: list[Case] = []

    def chosen(*names: str) -> bool:
        return not select or any(selected(n, select) for n in names)

    if "load" in offered:
        out += [dataclasses.replace(c, name=f"load:{c.name}", surface="load",
                                    reproducer=f"load(open(path, 'rb').read(), device)")
                for c in cases if c.origin == "corpus"]
    if "safe_open" not in offered:
        return out
    files = [c for c in cases if c.expect == ACCEPT and c.tensors is not None and c.origin in ("corpus", "generated")]
    files += [c for c in (slices[0] if slices else None, medium)
              if c is not None and c not in files and chosen(c.name, f"safe_open:{c.name}")]
    out += [dataclasses.replace(c, name=f"safe_open:{c.name}", surface="safe_open", request={"op": "open"},
                                reproducer="with safe_open(path, framework='pt', device=device) as f: "
                                           "f.keys(), f.offset_keys(), f.metadata(), f.get_tensor(name)")
            for c in files if all(t.torch_dtype for t in c.tensors.values())]
    if slices:
        file_case, pairs = slices
        pairs = [(n, i) for n, i in pairs if chosen(file_case.name, slice_case_name(file_case.name, n, i))]
        for k in range(0, len(pairs), SLICE_BATCH):
            out.append(_slice_batch(file_case, pairs[k:k + SLICE_BATCH], k))
        for c in (file_case, medium):
            if c is None or not chosen(c.name, f"prefetch:{c.name}"):
                continue
            header = read_header(c.path)
            out.append(dataclasses.replace(
                c, name=f"prefetch:{c.name}", surface="prefetch",
                request={"op": "prefetch", "plan": prefetch_plan(header)},
                reproducer="with safe_open(path, framework='pt', device=device) as f, f.prefetch(plan) as loader: "
                           "[loader.take(n) for n in loader.names()]"))
    return out


def _slice_batch(file_case: Case, pairs: list, first: int) -> Case:
    ops = [{"name": name, "index": indexing.encode(index)} for name, index in pairs]
    return dataclasses.replace(file_case, name=f"get_slice:{file_case.name}#{first}", surface="get_slice",
                               request={"op": "slices", "ops": ops, "first": first})


def _slice_op_case(batch: Case, op: dict[str, Any]) -> Case:
    index = indexing.decode(op["index"])
    file_case = batch.name.split(":", 1)[1].rsplit("#", 1)[0]
    return dataclasses.replace(batch, name=slice_case_name(file_case, op["name"], index),
                               tensors={op["name"]: batch.tensors[op["name"]]},
                               reproducer=slice_reproducer(file_case, op["name"], index),
                               request={"op": "slices", "ops": [op], "first": 0})


Verdict = tuple  # (case, passed: bool | None, detail, failed checks {tensor | None: [check]}, observation)


class Oracles:
    """Headers and tensors of the files judged, read once per run."""

    def __init__(self) -> None:
        self.headers: dict[str, Header] = {}
        self.tensors: dict[tuple[str, str], Any] = {}

    def header(self, path: str) -> Header:
        if path not in self.headers:
            self.headers[path] = read_header(path)
        return self.headers[path]

    def tensor(self, path: str, name: str):
        key = (path, name)
        if key not in self.tensors:
            self.tensors[key] = tensor_of(path, self.header(path), name)
        return self.tensors[key]


def verdicts(case: Case, device: str, obs: dict[str, Any] | None, failure: str,
             oracles: Oracles) -> list[Verdict] | list[Case]:
    """The verdicts on one surface request (``safe_open``, ``get_slice``, ``prefetch``); or, for
    a batch of slices whose worker crashed or hung, the single-op cases to run instead, so the
    op that did it is named."""
    if case.surface == "get_slice":
        ops = case.request["ops"]
        if obs is None and len(ops) > 1:
            return [_slice_op_case(case, op) for op in ops]
        out = []
        for i, op in enumerate(ops):
            one = _slice_op_case(case, op) if len(ops) > 1 or "#" in case.name else case
            if obs is None or not obs.get("accepted"):
                why = failure if obs is None else f"safe_open raised {obs.get('error_type')}: {obs.get('error', '')[:200]}"
                out.append((one, False, why, {op["name"]: ["hang" if "timed out" in why else "crash" if obs is None
                                                            else "safe_open"]}, obs))
                continue
            entry = oracles.header(case.path).entries[op["name"]]
            expected = oracle(oracles.tensor(case.path, op["name"]), entry["dtype"], indexing.decode(op["index"]))
            passed, detail = judge_slice(expected, obs["results"][i], device)
            out.append((one, passed, detail, {} if passed else {op["name"]: ["get_slice"]}, None))
        return out
    if obs is None or obs.get("accepted") is False:
        why = failure if obs is None else f"raised {obs.get('error_type')}: {obs.get('error', '')[:300]}"
        check = "hang" if "timed out" in why else "crash" if obs is None else case.surface
        return [(case, False, why, {None: [check]}, obs)]
    header = oracles.header(case.path)
    if case.surface == "prefetch":
        if not obs.get("offered"):
            return []
        problems = judge_prefetch(case.path, header, case.request["plan"], obs)
        return [(case, not problems, "; ".join(problems[:6]) if problems else
                 f"{len(obs.get('names', []))} planned tensors taken once each, as planned", {None: ["prefetch"]}
                 if problems else {}, None)]
    # safe_open
    problems = judge_open(case, header, obs)
    failed: dict[str | None, list[str]] = {}
    for check, messages in problems.items():
        for m in messages:
            name = m.split("'")[1] if m.count("'") >= 2 and m.split("'")[1] in header.entries else None
            if check not in failed.setdefault(name, []):
                failed[name].append(check)
    detail = "; ".join(f"[{k}] {m}" for k, ms in problems.items() for m in ms[:2])[:900]
    shared = obs.get("repeat_shares_memory") or []
    if not problems:
        detail = (f"{len(header.entries)} tensors: keys, offset_keys, metadata, get_tensor and get_slice's shape "
                  f"and dtype agree with the file" + (f"; a tensor asked for twice comes back sharing memory "
                                                      f"({len(shared)} of {len(header.entries)}: "
                                                      "implementation-defined)" if shared else ""))
    out: list[Verdict] = [(case, not problems, detail, failed, None)]
    if "get_tensor_meta" in obs.get("offered", []):
        meta_case = dataclasses.replace(case, name="get_tensor_meta:" + case.name.split(":", 1)[1],
                                        surface="get_tensor_meta")
        bad = judge_meta(header, obs)
        out.append((meta_case, not bad, "; ".join(bad[:4]) if bad else "every entry as the header writes it",
                    {None: ["get_tensor_meta"]} if bad else {}, None))
    return out
