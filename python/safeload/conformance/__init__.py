"""Conformance harness: runs any safetensors loader over the fixture corpus
and property-based cases, each case in an isolated worker process, and judges
what it returns byte for byte.

A loader is any callable ``(path, device) -> Mapping[str, torch.Tensor]`` that
raises on invalid input. Entry points: ``safeload conform`` (see
:mod:`safeload.conformance.cli`), :func:`run` from Python, and the pytest
helpers in :mod:`safeload.conformance.pytest_plugin`.
"""
from safeload.conformance.cases import Case, ExpectedTensor, load_corpus
from safeload.conformance.expected import parse_expected_failures
from safeload.conformance.report import Report, Result
from safeload.conformance.runner import LoaderUnavailable, run

__all__ = [
    "Case",
    "ExpectedTensor",
    "LoaderUnavailable",
    "Report",
    "Result",
    "load_corpus",
    "parse_expected_failures",
    "run",
]
