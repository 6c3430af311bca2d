"""The harness's modules import only downward: no import circle, counting the imports made
inside functions (a lazy import only hides a circle). Read from the sources, so the test
needs nothing built."""
from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python", "safeload")


def imports_of(path: str, module: str) -> set[str]:
    """Every safeload module ``path`` imports, anywhere in it."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module.rsplit(".", 1)[0] if not path.endswith("__init__.py") else module
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("safeload")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("safeload"):
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def graph(subpackage: str) -> dict[str, set[str]]:
    root = os.path.join(PACKAGE, *subpackage.split(".")[1:])
    modules = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(PACKAGE))
                name = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
                modules[name] = os.path.join(dirpath, f)
    return {m: {i for i in imports_of(p, m) if i in modules and i != m} for m, p in modules.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_harness_has_no_import_circle():
    g = graph("safeload.conformance")
    # `from safeload.conformance import checks` names the package on the way to the module; a
    # package's __init__ only re-exports, so edges into it are not followed.
    packages = {m for m in g if any(o.startswith(m + ".") for o in g)}
    found = cycle({m: deps - packages for m, deps in g.items()})
    assert found is None, " -> ".join(found)


def test_the_harness_layers_import_downward():
    g = graph("safeload.conformance")
    c = "safeload.conformance."
    # The process layer and the judge know nothing of the run that uses them.
    for low in ("process", "judge", "cases", "report", "progress", "testee"):
        assert not {n for n in g[c + low] if n.split(".")[-1] in ("runner", "checks", "dispatch", "cli")}, low
    assert c + "runner" not in g[c + "checks"] and c + "runner" not in g[c + "testee"]


def test_a_circle_is_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
