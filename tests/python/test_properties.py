"""safeload against upstream safetensors on generated files: the same
accept/reject verdict, and the same tensors when both accept.

Files come from the shared strategies (valid files of every dtype and
structured corruptions of them). Where conforming loaders may legitimately
differ (fixtures/README.md, the ``i_*`` cases) the property is narrower, and
what remains is still checked:

- a header-level implementation-defined case (``implementation_defined``):
  safeload rejects it, being the stricter reader in each of them;
- a dtype torch lacks (F6_*, F4 with an odd last dimension): safeload says
  UNSUPPORTED_DTYPE and upstream rejects too.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import safetensors.torch as upstream
from hypothesis import HealthCheck, find, given, settings

import safeload
import safeload.reference
from safeload.testing import strategies as sts
from safeload.testing.writer import build

from helpers import raw_bytes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def safeload_outcome(load, path):
    try:
        return "accept", load(path)
    except safeload.SafetensorError as e:
        return "reject", e.code


def upstream_outcome(path):
    try:
        return "accept", upstream.load_file(path)
    except Exception as e:  # upstream raises SafetensorError, and others for dtypes torch lacks
        return "reject", type(e).__name__


def check_against_upstream(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        theirs = upstream_outcome(path)
        reason = sts.implementation_defined(data)
        for load in (safeload.reference.load_file, safeload.load_file):
            ours = safeload_outcome(load, path)
            if reason is not None:
                assert ours[0] == "reject", reason
            elif ours == ("reject", "UNSUPPORTED_DTYPE"):
                assert theirs[0] == "reject"
            else:
                assert ours[0] == theirs[0], (ours[1] if ours[0] == "reject" else theirs[1])
                if ours[0] == "accept":
                    assert set(ours[1]) == set(theirs[1])
                    for name, t in ours[1].items():
                        assert tuple(t.shape) == tuple(theirs[1][name].shape), name
                        assert raw_bytes(t) == raw_bytes(theirs[1][name]), name


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=sts.files(corrupt_ratio=0.7))
def test_safeload_agrees_with_upstream_on_generated_files(case):
    check_against_upstream(case.data)


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=sts.corrupted_files())
def test_new_corruption_kinds_agree_with_upstream(case):
    # The same property, weighted towards the random edits (byte flips, JSON
    # syntax, huge dimensions) whose verdicts are the least predictable.
    check_against_upstream(case.data)


def test_fixture_corpus_agrees_with_upstream():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    for name, case in manifest["cases"].items():
        data = (FIXTURES / case["file"]).read_bytes()
        check_against_upstream(data)


def header_level_implementation_defined(manifest: dict) -> set[str]:
    """The fixture cases where conforming readers may disagree about the header
    itself, from the manifest: ``i_*`` cases safeload rejects, except for a
    dtype torch lacks (UNSUPPORTED_DTYPE, a loader's limit, not the file's).
    The ``i_*`` cases safeload accepts (whitespace, a null or repeated
    ``__metadata__``) are not among them."""
    return {name for name, case in manifest["cases"].items()
            if case["expect"] == "implementation-defined"
            and case["safeload"] not in ("accept", "UNSUPPORTED_DTYPE")}


def test_implementation_defined_matches_the_fixture_corpus():
    # The classifier names every header-level i_ case and nothing else, y_ and
    # n_ cases included.
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    header_level = header_level_implementation_defined(manifest)
    assert header_level, "the manifest lists no header-level implementation-defined case"
    for name, case in manifest["cases"].items():
        reason = sts.implementation_defined((FIXTURES / case["file"]).read_bytes())
        if name in header_level:
            assert reason is not None, name
        else:
            assert reason is None, (name, reason)


@pytest.mark.parametrize("kind", list(sts.Corruption), ids=lambda k: k.value)
def test_every_corruption_kind_is_generated(kind):
    # Guards the strategies themselves: Hypothesis finds a file of this kind
    # (labelled with it) holding a tensor, so the kind's own edit applies (a
    # tensor-level edit of a file without tensors falls back to truncation); it
    # differs from the valid file it was made from and is not
    # implementation-defined.
    case = find(sts.corrupted_files(max_tensors=3), lambda c: c.label == kind.value and len(c.tensors) > 0,
                settings=settings(max_examples=2000, database=None, derandomize=True,
                                  suppress_health_check=list(HealthCheck)))
    assert case.label == kind.value
    assert case.data != build(case.tensors, case.layout).data, kind
    assert sts.implementation_defined(case.data) is None, kind


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(case=sts.corrupted_files(max_tensors=3))
def test_corrupted_files_are_never_implementation_defined(case):
    assert sts.implementation_defined(case.data) is None, case.label
