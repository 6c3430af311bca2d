"""The judge: what a loader returned (an observation from a worker) against what the case
expects. Pure functions of their arguments: no process, no loader, no I/O."""
from __future__ import annotations

from typing import Any

from safeload.conformance.cases import IMPL, REJECT, Case


def device_matches(observed: str, requested: str) -> bool:
    if observed == requested:
        return True
    req_type, _, req_index = requested.partition(":")
    obs_type, _, obs_index = observed.partition(":")
    if req_type != obs_type:
        return False
    return not req_index or req_index == obs_index


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
            same = case.tensors is not None and compare(case, device, obs) == []
            return None, f"accepted ({len(names)} tensors{', as the lenient reading expects' if same else ''})", {}
        return None, f"rejected: {describe_error(obs)}", {}
    if case.expect == REJECT:
        if obs["accepted"]:
            return False, f"accepted a malformed file (returned {len(obs.get('tensors', {}))} tensors)", {None: ["rejects_malformed"]}
        if strict_codes and case.error and obs.get("error_code") != case.error:
            return (False, f"rejected with code {obs.get('error_code')!r}, expected {case.error!r}: {obs.get('error')}",
                    {None: ["error_code"]})
        return True, f"rejected: {describe_error(obs)}", {}
    if not obs["accepted"]:
        return False, f"rejected a valid file: {describe_error(obs)}", {None: ["accepts_valid"]}
    found = compare(case, device, obs)
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


def describe_error(obs: dict[str, Any]) -> str:
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


def compare(case: Case, device: str, obs: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """(check, tensor name or None, message) for every difference."""
    got = obs.get("tensors", {})
    want = expected_view(case)
    problems: list[tuple[str, str | None, str]] = []
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        # Attributed to each missing tensor (so to its dtype), the message once.
        problems.append(("names", missing[0], f"missing tensors {names(missing)}"))
        problems += [("names", name, "") for name in missing[1:]]
    if extra:
        problems.append(("names", None, f"unexpected tensors {names(extra)}"))
    for name in sorted(set(want) & set(got)):
        w, g = want[name], got[name]
        if w["dtype"] != g["dtype"]:
            problems.append(("dtype", name, f"{name!r}: dtype {g['dtype']}, expected {w['dtype']}"))
        if w["shape"] != g["shape"]:
            problems.append(("shape", name, f"{name!r}: shape {g['shape']}, expected {w['shape']}"))
        if not device_matches(g["device"], device):
            why = " (wrong device index)" if g["device"].partition(":")[0] == device.partition(":")[0] else ""
            problems.append(("device", name, f"{name!r}: on device {g['device']}, expected {device}{why}"))
        if w["sha256"] != g["sha256"]:
            problems.append(("bytes", name, f"{name!r}: bytes differ from the file's"))
    return problems


def same_error_class(mine: dict[str, Any], ref: dict[str, Any]) -> bool:
    """Same class, or a subclass of upstream's (what ``except`` in user code
    sees): safeload's SafetensorError derives from upstream's."""
    theirs = ref.get("error_type")
    return mine.get("error_type") == theirs or theirs in (mine.get("error_mro") or [])


def names(names: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
