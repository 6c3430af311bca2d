"""pytest integration, for projects that gate on pytest.

One test per case (expected failures become strict xfails)::

    # tests/test_safetensors_conformance.py
    from safeload.conformance.pytest_plugin import conformance_tests

    test_conformance = conformance_tests(
        "mypkg.io:load_safetensors",              # or a shipped adapter's name
        device="cpu",
        expected_failures="conformance/mypkg.txt",  # optional
    )

The whole suite runs once, in isolated workers, the first time one of the
generated tests executes; each test then reports its own case.

Or, as a plugin (``pytest_plugins = ["safeload.conformance.pytest_plugin"]``
in a conftest, or ``pytest -p safeload.conformance.pytest_plugin``; it is
not loaded into other pytest sessions), the ``safeload_conformance`` fixture runs the suite and
returns a :class:`~safeload.conformance.report.Report`::

    def test_loader(safeload_conformance):
        report = safeload_conformance("mypkg.io:load_safetensors")
        assert report.ok, report.render()
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from safeload.conformance.cases import load_corpus
from safeload.conformance.expected import load_expected_failures
from safeload.conformance.report import FAILED, XFAIL, XPASS, Report
from safeload.conformance.runner import LoaderUnavailable, run


def _spec(loader: str) -> str:
    from safeload.conformance.adapters import ADAPTERS, spec

    return spec(loader) if loader in ADAPTERS else loader


def conformance_tests(
    loader: str,
    *,
    device: str = "cpu",
    cases: str | None = None,
    select: Sequence[str] = (),
    expected_failures: str | None = None,
    timeout: float = 60.0,
    jobs: int = 1,
    property_cases: int = 0,
    seed: int = 0,
    strict_codes: bool = False,
    checks: Sequence[str] = (),
    generated: bool = False,
) -> Callable[[str], None]:
    """A test function parametrized over every case (assign it to a
    ``test_*`` name in a test module)."""
    corpus = load_corpus(cases, select)
    names = [c.name for c in corpus]
    xfail = load_expected_failures(expected_failures)

    @functools.lru_cache(maxsize=1)
    def report() -> Report | str:
        try:
            return run(_spec(loader), devices=[device], cases=corpus, expected_failures=xfail, timeout=timeout,
                       jobs=jobs, strict_codes=strict_codes, property_cases=property_cases, seed=seed,
                       checks=checks, generated=generated)
        except LoaderUnavailable as e:
            return str(e)

    if property_cases:
        names.append("property-based cases")
    names += [f"check.{c}" for c in checks]
    if generated:
        names.append("generated cases")

    @pytest.mark.parametrize("case", names)
    def test(case: str) -> None:
        rep = report()
        if isinstance(rep, str):
            pytest.skip(f"{loader}: {rep}")
        if case == "generated cases":
            bad = [r for r in rep.failures() if r.case.origin == "generated"]
            assert not bad, "\n".join(f"{r.case.name}: {r.detail}" for r in bad) + f"\n(seed {seed})"
            return
        if case == "property-based cases":
            bad = [r for r in rep.failures() if r.case.origin == "property"]
            assert not bad, "\n".join(f"{r.case.name}: {r.detail}" for r in bad) + f"\n(seed {seed})"
            return
        result = rep.by_name(device)[case]
        if result.outcome == XFAIL:
            pytest.xfail(result.detail)
        if result.outcome in (FAILED, XPASS):
            pytest.fail(f"{case} [{device}]: {result.detail}", pytrace=False)

    return test


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("safeload-conformance")
    group.addoption("--conform-timeout", type=float, default=60.0, help="seconds per conformance case")
    group.addoption("--conform-device", default="cpu", help="device for the safeload_conformance fixture")


@pytest.fixture
def safeload_conformance(request: Any) -> Callable[..., Report]:
    """Runs the conformance suite against a loader; skips if its package is missing."""
    opts = request.config.option

    def _run(loader: str, **kwargs: Any) -> Report:
        kwargs.setdefault("devices", [getattr(opts, "conform_device", "cpu")])
        kwargs.setdefault("timeout", getattr(opts, "conform_timeout", 60.0))
        if "cases" not in kwargs:
            kwargs["cases"] = load_corpus(None, kwargs.pop("select", ()))
        if isinstance(kwargs.get("expected_failures"), str):
            kwargs["expected_failures"] = load_expected_failures(kwargs["expected_failures"])
        try:
            return run(_spec(loader), **kwargs)
        except LoaderUnavailable as e:
            pytest.skip(f"{loader}: {e}")

    return _run
