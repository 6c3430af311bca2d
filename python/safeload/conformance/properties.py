"""Property-based cases: Hypothesis draws valid files and structured
corruptions of them from a seed, so a run is reproducible with ``--seed``.

Valid files are judged against what the writer was given (names, dtypes,
shapes, SHA-256 of the bytes). A corrupted file is usually, not always,
invalid, so its expectation is the reference loader's verdict: reject if it
rejects, else exactly the tensors it returned.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from safeload.conformance.cases import ACCEPT, REJECT, TORCH_DTYPES, Case, ExpectedTensor


def generate(seed: int, count: int, directory: Path) -> list[Case]:
    """Write ``count`` files drawn from ``seed`` into ``directory``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from safeload.testing import strategies

    dtypes = [d for d in strategies.dtype_names() if d in TORCH_DTYPES]
    drawn: list[strategies.FileCase] = []
    seen: set[bytes] = set()

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(strategies.files(dtypes))
    def collect(case: strategies.FileCase) -> None:
        if case.data not in seen and len(drawn) < count:
            seen.add(case.data)
            drawn.append(case)

    collect()
    directory.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, fc in enumerate(drawn):
        name = f"h{seed}_{i:04d}_{fc.label}"
        path = directory / f"{name}.safetensors"
        path.write_bytes(fc.data)
        sha = hashlib.sha256(fc.data).hexdigest()
        if fc.valid:
            tensors = {t.name: ExpectedTensor(t.dtype, tuple(t.shape), hashlib.sha256(t.data).hexdigest(), len(t.data))
                       for t in fc.tensors}
            cases.append(Case(name, str(path), ACCEPT, "valid file drawn by Hypothesis", sha, tensors, origin="property"))
        else:
            cases.append(Case(name, str(path), REJECT, f"corruption: {fc.label}", sha, origin="property"))
    return cases


def with_reference_verdicts(cases: list[Case], reference: str, *, timeout: float, jobs: int, workdir: str,
                            run_cases: Callable[..., None], log: Callable[[str], None],
                            dropped: list[str] | None = None) -> list[Case]:
    """Replace each corrupted case's provisional expectation by the reference
    loader's verdict. Valid cases keep the writer's expectation. Cases the
    reference cannot decide (crash, hang) are dropped with a message, and
    their names appended to ``dropped``."""
    corrupted = [c for c in cases if c.tensors is None]
    verdicts: dict[str, dict[str, Any] | None] = {}

    def on_result(case: Case, obs: dict[str, Any] | None, failure: str, seconds: float) -> None:
        verdicts[case.name] = obs
        if obs is None:
            log(f"reference loader failed on {case.name}: {failure}; case dropped")
            if dropped is not None:
                dropped.append(case.name)

    run_cases(reference, "cpu", corrupted, timeout=timeout, jobs=jobs, workdir=workdir, ownership=False,
              on_result=on_result)
    out = []
    for c in cases:
        if c.tensors is not None:
            out.append(c)
            continue
        obs = verdicts.get(c.name)
        if obs is None:
            continue
        if not obs["accepted"]:
            out.append(Case(c.name, c.path, REJECT, c.why + f"; reference: {obs.get('error_code') or obs.get('error_type')}",
                            c.sha256, error=obs.get("error_code"), origin="property"))
        else:
            observed = {n: {"dtype": t["dtype"], "shape": t["shape"], "sha256": t["sha256"]}
                        for n, t in obs["tensors"].items()}
            out.append(Case(c.name, c.path, ACCEPT, c.why + "; reference accepts it", c.sha256,
                            observed=observed, origin="property"))
    return out
