"""A conformance run: the cases, the named checks and the comparison with upstream, in order,
through the process layer (:mod:`~safeload.conformance.dispatch`), each verdict from the judge
(:mod:`~safeload.conformance.judge`), into a :class:`~safeload.conformance.report.Report`."""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safeload.conformance import checks as checks_mod
from safeload.conformance import indexing
from safeload.conformance import surfaces as surfaces_mod
from safeload.conformance.cases import REJECT, Case
from safeload.conformance.dispatch import offered_surfaces, run_cases
from safeload.conformance.judge import describe_error, judge_checks, names, same_error_class
from safeload.conformance.process import LoaderUnavailable, WorkerStartError, start_run, stop_children
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
    surfaces: bool = True,
    index_cases: int = 100,
    select: Sequence[str] = (),
) -> Report:
    """Run ``loader`` over ``cases`` on each device. ``loader`` is ``MODULE:FUNC`` (its
    ``load_file``), ``MODULE`` (every surface it defines: ``load_file``, ``load``,
    ``safe_open``; see :mod:`safeload.conformance.surfaces`) or ``exec:CMD`` (an executable
    testee: ``load_file``). Plus:

    - ``property_cases`` Hypothesis-generated cases from ``seed`` whose
      verdicts on corrupted files come from ``reference`` (skipped, and said so, where it
      cannot run);
    - with ``generated``, run-time files of tens of MiB across chunk
      boundaries (and with ``large``, a tensor and a file over 4 GiB);
    - with ``surfaces`` and a testee that offers them, ``load(bytes)`` over the corpus,
      ``safe_open`` over every valid file, ``get_slice`` over a file of every dtype with the
      fixed corner-case indexes and ``index_cases`` more drawn by Hypothesis from ``seed``,
      and ``prefetch(plan)``; with ``select`` (globs), only the surface cases whose name or file
      case matches (``cases`` are taken as given);
    - the named ``checks`` (see :data:`safeload.conformance.checks.CHECKS`):
      leaks, thread and process safety, independence from the file, through
      ``load_file`` and through ``safe_open``;
    - with ``upstream`` (a loader spec), the key order and error class of
      every case compared with that loader's, as information.

    ``python`` runs the loader's worker under another interpreter (e.g. a
    virtual environment with another version of a peer). ``progress`` (a
    :class:`safeload.conformance.progress.Progress`) is told of each phase,
    each case as it starts and each verdict; messages then go through it.
    KeyboardInterrupt (Ctrl-C, or SIGTERM where the caller maps it so) stops the run: the
    report of what was done is returned, marked ``interrupted``. Raises LoaderUnavailable if
    the loader cannot be imported."""
    progress = progress or Progress(mode="quiet")
    if log is None:
        log = lambda s: None  # noqa: E731
    elif progress.mode != "quiet":
        log = progress.log
    expected_failures = dict(expected_failures or {})
    unknown = sorted(set(checks) - set(checks_mod.CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(checks_mod.CHECKS)}")
    use_seed = property_cases or generated or checks or surfaces
    report = Report(loader=loader, devices=list(devices), seed=seed if use_seed else None,
                    property_cases=property_cases, expected_failures=expected_failures)
    start_run()
    try:
        with tempfile.TemporaryDirectory(prefix="safeload-conform-") as workdir:
            _run(report, loader, devices, list(cases), expected_failures, timeout, jobs, strict_codes, property_cases,
                 seed, reference, checks, generated, large, upstream, python, log, progress, surfaces, index_cases,
                 select, workdir)
    except KeyboardInterrupt:
        report.interrupted = True
        stop_children()
        log("interrupted: the report below holds what was done before")
    finally:
        progress.close()
    seen = {r.case.name for r in report.results}
    report.stale_expected = [] if report.interrupted else sorted(n for n in expected_failures if n not in seen)
    return report


def _run(report: Report, loader: str, devices: Sequence[str], all_cases: list[Case], expected_failures: dict[str, str],
         timeout: float, jobs: int, strict_codes: bool, property_cases: int, seed: int, reference: str,
         checks: Sequence[str], generated: bool, large: bool, upstream: str | None, python: str | None,
         log: Callable[[str], None], progress: Progress, surfaces: bool, index_cases: int, select: Sequence[str],
         workdir: str) -> None:
    def record(case: Case, device: str, passed: bool | None, detail: str, failed: dict, seconds: float,
               obs: dict[str, Any] | None) -> None:
        outcome = _record(report, expected_failures, case, device, passed, detail, failed, seconds, obs, log)
        progress.done(failed=outcome in (FAILED, XPASS))

    if property_cases:
        all_cases += _property_cases(report, property_cases, seed, reference, timeout, jobs, workdir, log, progress)
    offered, limited = offered_surfaces(loader, workdir, python) if surfaces else (["load_file"], {})
    for name, what in (("load", "load(data, device)"), ("safe_open", "safe_open(path, framework, device=...)")):
        if surfaces and name not in offered:
            report.not_run.append((f"surface {name}", f"the testee does not offer {what}"))
    gen_dir = Path(workdir) / "generated"
    gen_dir.mkdir()
    medium = None
    if generated or large or checks or "safe_open" in offered:
        from safeload.conformance import generated as gen

        log(f"generated cases from seed {seed} (reproduce with --seed {seed})")
        medium = gen.medium_case(seed, gen_dir)
        if generated:
            all_cases.append(gen.chunk_case(seed, gen_dir))
        if large:
            log("writing the over-4-GiB case (--large)")
            all_cases.append(gen.over_4gib_case(seed, gen_dir))
    surface_list: list[Case] = []
    if surfaces:
        slices = None
        if "safe_open" in offered:
            file_case, pairs = surfaces_mod.slices_case(seed, gen_dir)
            drawn = indexing.drawn(seed, {n: list(t.shape) for n, t in (file_case.tensors or {}).items()
                                          if t.dtype in surfaces_mod.TORCH_DTYPES}, index_cases)
            slices = (file_case, pairs + drawn)
            log(f"get_slice: {len(pairs)} corner cases and {len(drawn)} indexes drawn from seed {seed}")
        surface_list = surfaces_mod.surface_cases(all_cases, offered, slices, medium, select)
    surface_checks = [s for s in ("load_file", "safe_open") if s in offered]
    n_checks = len(checks_mod.runnable(loader, checks, medium is not None)) * len(surface_checks)
    progress.phase("cases", (len(all_cases) + len(surface_list) + n_checks) * len(devices))
    oracles = surfaces_mod.Oracles()
    for device in devices:
        isolate: list[Case] = []

        def on_result(case: Case, obs: dict[str, Any] | None, failure: str, seconds: float,
                      device: str = device) -> None:
            if case.surface in ("load_file", "load"):
                passed, detail, failed = judge_checks(case, device, obs, failure, strict_codes)
                record(case, device, passed, detail, failed, seconds, obs)
                return
            found = surfaces_mod.verdicts(case, device, obs, failure, oracles)
            if found and isinstance(found[0], Case):
                isolate.extend(found)  # a batch that crashed or hung: its ops one by one
                log(f"{case.name} [{device}]: {failure}; running its {len(found)} index expressions one by one")
                progress.done(failed=True)
                return
            if case.surface == "prefetch" and not found:
                report.not_run.append((f"{case.name} [{device}]", "the safe_open object has no prefetch()"))
            if case.surface == "safe_open" and len(found) == 1 and found[0][1] is not None and obs:
                if "get_tensor_meta" not in obs.get("offered", []) and not any(
                        w == "get_tensor_meta" for w, _ in report.not_run):
                    report.not_run.append(("get_tensor_meta", "the safe_open object has no get_tensor_meta() "
                                                              "(safetensors 0.9 adds it)"))
            for i, (c, passed, detail, failed, o) in enumerate(found):
                outcome = _record(report, expected_failures, c, device, passed, detail, failed, seconds, o, log)
                if i == 0:
                    progress.done(failed=outcome in (FAILED, XPASS))

        def started(c: Case, d: str = device) -> None:
            progress.start(f"{c.name} [{d}]")

        here = [c for c in surface_list if device.split(":")[0] in limited.get(c.surface, [device.split(":")[0]])]
        for c in surface_list:
            if c not in here:
                report.not_run.append((f"{c.name} [{device}]", f"the testee offers {c.surface} on "
                                                               f"{', '.join(limited[c.surface])} alone"))
                progress.done()
        run_cases(loader, device, all_cases + here, timeout=timeout, jobs=jobs, workdir=workdir,
                  python=python, on_result=on_result, on_start=started)
        if isolate:
            progress.phase("isolating crashed or hung index expressions", len(isolate))
            run_cases(loader, device, isolate, timeout=timeout, jobs=jobs, workdir=workdir, python=python,
                      on_result=on_result, on_start=started)
        if checks:
            for surface in surface_checks:
                for case, passed, detail, seconds in checks_mod.run_checks(
                        loader, device, checks, all_cases, medium, timeout=timeout, workdir=workdir, python=python,
                        log=log, not_run=report.not_run, surface=surface,
                        on_start=lambda n, d=device: progress.start(f"check.{n} [{d}]")):
                    failed = {None: [case.name.split("check.", 1)[1]]} if passed is False else {}
                    record(case, device, passed, detail, failed, seconds, None)
    if upstream:
        report.upstream = upstream
        _compare_upstream(report, upstream, all_cases, devices[0], timeout=timeout, jobs=jobs, workdir=workdir,
                          log=log, progress=progress)


def _property_cases(report: Report, count: int, seed: int, reference: str, timeout: float, jobs: int, workdir: str,
                    log: Callable[[str], None], progress: Progress) -> list[Case]:
    """The property-based cases: valid ones judged by what the writer was given, corrupted
    ones by ``reference``'s verdicts; where the reference cannot run, the corrupted ones are
    skipped and the report says so."""
    from safeload.conformance import properties

    log(f"property cases: {count} from seed {seed} (reproduce with --seed {seed})")
    generated_cases = properties.generate(seed, count, Path(workdir) / "property")
    corrupted = sum(1 for c in generated_cases if c.tensors is None)

    def reference_cases(*args, on_result, **kwargs):
        def done(*result):
            on_result(*result)
            progress.done()

        run_cases(*args, on_result=done, on_start=lambda c: progress.start(c.name), **kwargs)

    progress.phase("reference verdicts", corrupted)
    dropped: list[str] = []
    try:
        judged = properties.with_reference_verdicts(generated_cases, reference, timeout=timeout, jobs=jobs,
                                                    workdir=workdir, run_cases=reference_cases, log=log,
                                                    dropped=dropped)
    except (LoaderUnavailable, WorkerStartError) as e:
        why = (f"{corrupted} corrupted property cases skipped: their verdict is the reference loader's, and "
               f"{reference} cannot run here ({str(e).splitlines()[0][:300]}); --reference names another")
        log(why)
        report.not_run.append(("property cases (corrupted)", why))
        return [c for c in generated_cases if c.tensors is not None]
    if dropped:
        report.not_run.append(("property cases (corrupted)", f"{len(dropped)} dropped: the reference loader "
                                                              f"crashed or hung on {', '.join(dropped[:5])}"))
    return judged


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
        log(f"FAIL {case.name} [{device}]: {detail}" + (f"\n  reproduce: {case.reproducer.replace('DEVICE', repr(device))}"
                                                         if case.reproducer and outcome == FAILED else ""))
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


