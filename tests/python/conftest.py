import glob
import os
import sys

# Prefer the in-place development build (python/safeload/_C*.so, made by
# `make build`); otherwise test the installed package (e.g. under tox).
_SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "python")
if glob.glob(os.path.join(_SOURCE, "safeload", "_C*.so")):
    sys.path.insert(0, _SOURCE)
