"""Expected-failure lists, in the style of protobuf's conformance failure lists.

One case name per line followed by ``#`` and the reason it fails::

    # upstream safetensors 0.8.0
    n_something   # accepts the file; upstream issue #123

Blank lines and lines that are only a comment are ignored. A case that is
listed but passes is reported as a failure (an unexpected pass), so a list can
only shrink as the loader improves.
"""
from __future__ import annotations

import os
import re

# A case name: any run of characters without space or '#' (surface cases carry an index
# expression, e.g. get_slice:g0_slices:f32_2d[:,3:0:3]).
_NAME = re.compile(r"^[^\s#]+$")


class ExpectedFailuresError(ValueError):
    pass


def parse_expected_failures(text: str, source: str = "<string>") -> dict[str, str]:
    """Case name -> reason. Raises ExpectedFailuresError on a malformed line,
    a missing reason or a name listed twice."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, reason = line.partition("#")
        name, reason = name.strip(), reason.strip()
        where = f"{source}:{lineno}"
        if not sep or not reason:
            raise ExpectedFailuresError(f"{where}: '{name}' has no reason; write 'NAME  # why it fails'")
        if not _NAME.match(name):
            raise ExpectedFailuresError(f"{where}: {name!r} is not a case name")
        if name in out:
            raise ExpectedFailuresError(f"{where}: {name} is listed twice")
        out[name] = reason
    return out


def load_expected_failures(path: str | os.PathLike | None) -> dict[str, str]:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return parse_expected_failures(f.read(), os.fspath(path))
