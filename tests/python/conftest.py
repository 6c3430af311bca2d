import glob
import os
import sys

# Prefer the in-place development build (python/safeload/_C*.so, made by
# `make build`); otherwise test the installed package (e.g. under tox).
_SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "python")
if glob.glob(os.path.join(_SOURCE, "safeload", "_C*.so")):
    sys.path.insert(0, _SOURCE)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shim():
    """The fault-injection library (tests/fault/fault_shim.c), compiled once
    per run for the fault and robustness suites; skips without a compiler."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fault"))
    import harness

    try:
        return harness.build_shim()
    except harness.NoCompiler as e:
        pytest.skip(str(e))
