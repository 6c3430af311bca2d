"""A conformance run: the cases, the named checks and the comparison with upstream, in order,
through the process layer (:mod:`~safeload.conformance.dispatch`), each verdict from the judge
(:mod:`~safeload.conformance.judge`), into a :class:`~safeload.conformance.report.Report`."""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safeload.conformance import checks as checks_mod
from safeload.conformance.cases import REJECT, Case
from safeload.conformance.dispatch import run_cases
from safeload.conformance.judge import describe_error, judge_checks, names, same_error_class
from safeload.conformance.process import LoaderUnavailable, WorkerStartError
from safeload.conformance.progress import Progress
from safeload.conformance.report import FAILED, IMPL_DEFINED, PASSED, XFAIL, XPASS, Report, Result

__all__ = ["LoaderUnavailable", "WorkerStartError", "run"]


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

                run_cases(*args, on_result=done, on_start=lambda c: progress.start(c.name), **kwargs)

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

            run_cases(loader, device, all_cases, timeout=timeout, jobs=jobs, workdir=workdir, python=python,
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
        run_cases(upstream, device, compared, timeout=timeout, jobs=jobs, workdir=workdir, ownership=False,
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
                    (r.case.name, f"returns {names(mine['order'], 4)}; upstream {names(ref['order'], 4)}"))
        elif (not mine.get("accepted") and not ref.get("accepted") and r.case.expect == REJECT
              and not report.loader.startswith("exec:")):  # an executable's errors are its language's
            if not same_error_class(mine, ref):
                report.info.setdefault("error_class", []).append(
                    (r.case.name, f"raises {mine.get('error_type')}; upstream raises {ref.get('error_type')}"))


