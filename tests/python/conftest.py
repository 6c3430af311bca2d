import os
import sys

# Run against the in-place build (python/safeload/_C*.so) when not installed.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
