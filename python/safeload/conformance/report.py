"""Results, the summary table, the dtype x device coverage matrix, the
information on differences from upstream, and the machine-readable report."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from safeload.conformance.cases import ACCEPT, TORCH_DTYPES, Case
from safeload.conformance.surfaces import RESULT_SURFACES

PASSED = "passed"
FAILED = "failed"
XFAIL = "expected-failure"
XPASS = "unexpected-pass"
IMPL_DEFINED = "implementation-defined"
OUTCOMES = (PASSED, FAILED, XFAIL, XPASS, IMPL_DEFINED)

# Coverage cell states, worst first.
CELL_FAIL, CELL_XFAIL, CELL_OK, CELL_NONE = "FAIL", "xfail", "ok", "--"


@dataclasses.dataclass
class Result:
    case: Case
    device: str
    outcome: str
    detail: str
    seconds: float
    observation: dict[str, Any] | None = None
    # tensor name (None: the whole file) -> names of the checks that failed
    failed_checks: dict[str | None, list[str]] = dataclasses.field(default_factory=dict)

    def check_names(self) -> list[str]:
        return sorted({c for cs in self.failed_checks.values() for c in cs})

    def to_json(self) -> dict[str, Any]:
        obs = self.observation or {}
        return {
            "case": self.case.name,
            "surface": self.case.surface,
            "origin": self.case.origin,
            "expect": self.case.expect,
            "device": self.device,
            "outcome": self.outcome,
            "detail": self.detail,
            "failed_checks": self.check_names(),
            "seconds": round(self.seconds, 4),
            "accepted": obs.get("accepted"),
            "error_type": obs.get("error_type"),
            "error_code": obs.get("error_code"),
            "reproducer": self.case.reproducer.replace("DEVICE", repr(self.device)) if self.case.reproducer else None,
        }


@dataclasses.dataclass
class Cell:
    passed: int = 0
    failed: int = 0
    xfailed: int = 0
    reasons: list[str] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.xfailed

    @property
    def state(self) -> str:
        if self.failed:
            return CELL_FAIL
        if self.xfailed:
            return CELL_XFAIL
        return CELL_OK if self.passed else CELL_NONE

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "passed": self.passed, "failed": self.failed, "expected_failures": self.xfailed,
                "total": self.total, "reasons": self.reasons[:3]}


@dataclasses.dataclass
class Report:
    loader: str
    devices: list[str]
    seed: int | None = None
    property_cases: int = 0
    expected_failures: dict[str, str] = dataclasses.field(default_factory=dict)
    results: list[Result] = dataclasses.field(default_factory=list)
    stale_expected: list[str] = dataclasses.field(default_factory=list)
    # what was compared with upstream, and where the loader differs (not judged)
    upstream: str | None = None
    info: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    # (what, why) for checks that could not run
    not_run: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # stopped before the end (Ctrl-C, SIGTERM): the results are what was done until then
    interrupted: bool = False

    def add(self, result: Result) -> None:
        self.results.append(result)

    def counts(self) -> Counter:
        return Counter(r.outcome for r in self.results)

    @property
    def ok(self) -> bool:
        """True only if nothing unexpected happened."""
        c = self.counts()
        return c[FAILED] == 0 and c[XPASS] == 0 and not self.interrupted

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.outcome in (FAILED, XPASS)]

    def by_name(self, device: str | None = None) -> dict[str, Result]:
        return {r.case.name: r for r in self.results if device is None or r.device == device}

    def failed_checks(self) -> Counter:
        """Check name -> number of unexpected failures it caught."""
        return Counter(c for r in self.results if r.outcome == FAILED for c in r.check_names())

    def coverage(self) -> dict[str, dict[str, Cell]]:
        """dtype -> device -> Cell over the valid cases.

        A failure is charged to the dtypes of the tensors it concerns: a
        tensor with wrong bytes marks its own dtype only. A valid file
        rejected (or crashed on) as a whole is charged to its dtypes that
        fail on their own in single-dtype files of the same run; if none
        does, to all of its dtypes (the run cannot tell which). Expected
        failures count as such, never as FAIL."""
        return self._coverage(lambda r: r.device, [r for r in self.results if r.case.surface == "load_file"])

    def surface_coverage(self) -> dict[str, dict[str, Cell]]:
        """dtype -> surface -> Cell, over every device: :meth:`coverage` by surface."""
        return self._coverage(lambda r: r.case.surface, self.results)

    def _coverage(self, column, results: list[Result]) -> dict[str, dict[str, Cell]]:
        m: dict[str, dict[str, Cell]] = {}
        valid = [r for r in results if r.case.expect == ACCEPT and r.case.tensors is not None
                 and r.case.origin != "check"]
        alone_bad: dict[str, set[str]] = {}
        for r in valid:
            if len(r.case.dtypes()) == 1 and r.outcome in (FAILED, XFAIL):
                alone_bad.setdefault(column(r), set()).update(r.case.dtypes())
        for r in valid:
            dtypes = r.case.dtypes()
            row = lambda d: m.setdefault(d, {}).setdefault(column(r), Cell())  # noqa: E731
            if r.outcome in (PASSED, XPASS, IMPL_DEFINED):
                for d in dtypes:
                    row(d).passed += 1
                continue
            charged: set[str] = set()
            whole = r.failed_checks.get(None, [])
            per_tensor = {n: cs for n, cs in r.failed_checks.items() if n is not None}
            for name in per_tensor:
                t = (r.case.tensors or {}).get(name)
                if t is not None:
                    charged.add(t.dtype)
            if whole or not per_tensor:
                if len(dtypes) == 1:
                    charged |= dtypes
                else:
                    culprits = dtypes & alone_bad.get(column(r), set())
                    charged |= culprits or dtypes
            for d in dtypes:
                cell = row(d)
                if d not in charged:
                    cell.passed += 1
                elif r.outcome == XFAIL:
                    cell.xfailed += 1
                else:
                    cell.failed += 1
                    cell.reasons.append(f"{r.case.name}: {r.detail[:160]}")
        return m

    def matrix(self) -> dict[str, dict[str, tuple[int, int]]]:
        """dtype -> device -> (passed, total): the short form of :meth:`coverage`."""
        return {d: {dev: (c.passed, c.total) for dev, c in row.items()} for d, row in self.coverage().items()}

    def summary_table(self) -> str:
        c = self.counts()
        rows = [
            ("passed", c[PASSED]),
            ("failed", c[FAILED]),
            ("expected-failure", c[XFAIL]),
            ("unexpected pass", c[XPASS]),
            ("implementation-defined", c[IMPL_DEFINED]),
            ("total", len(self.results)),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v:>6}" for k, v in rows]
        checks = self.failed_checks()
        if checks:
            lines += ["", "failures by check: " + ", ".join(f"{k} {v}" for k, v in sorted(checks.items()))]
        return "\n".join(lines)

    def matrix_table(self, reasons: bool = False, by_surface: bool = False) -> str:
        cov = self.surface_coverage() if by_surface else self.coverage()
        if not cov:
            return "(no valid cases ran)"
        order = {d: i for i, d in enumerate(TORCH_DTYPES)}
        dtypes = sorted(cov, key=lambda d: (order.get(d, len(order)), d))
        columns = self.devices
        if by_surface:
            seen = {s for row in cov.values() for s in row}
            columns = [s for s in RESULT_SURFACES if s in seen]
        width = max(len(d) for d in dtypes + ["dtype"])
        header = f"{'dtype':<{width}}  " + "  ".join(f"{dev:>15}" for dev in columns)
        lines = [header, "-" * len(header)]
        for d in dtypes:
            cells = []
            why = ""
            for dev in columns:
                c = cov[d].get(dev, Cell())
                cells.append(f"{c.state + ' ' + str(c.passed) + '/' + str(c.total):>15}")
                if reasons and c.reasons and not why:
                    why = "   " + c.reasons[0]
            lines.append(f"{d:<{width}}  " + "  ".join(cells) + why)
        return "\n".join(lines)

    def coverage_json(self) -> dict[str, Any]:
        return {"loader": self.loader, "devices": self.devices, "ok": self.ok, "seed": self.seed,
                "coverage": {d: {dev: c.to_json() for dev, c in row.items()} for d, row in self.coverage().items()},
                "surface_coverage": {d: {s: c.to_json() for s, c in row.items()}
                                     for d, row in self.surface_coverage().items()}}

    def render_coverage(self) -> str:
        """The coverage matrices alone, read at a glance: one row per dtype, by device, then
        by surface where the loader offers more than load_file."""
        cov = self.coverage()
        by_surface = self.surface_coverage()
        bad = sorted(d for m in (cov, by_surface) for d, row in m.items()
                     if any(c.state == CELL_FAIL for c in row.values()))
        x = sorted(d for m in (cov, by_surface) for d, row in m.items()
                   if any(c.state == CELL_XFAIL for c in row.values()))
        bad, x = sorted(set(bad)), sorted(set(x))
        out = [f"dtype coverage of {self.loader} on {', '.join(self.devices)} "
               "(valid files: tensors of the dtype loaded correctly / files with the dtype)", "",
               self.matrix_table(reasons=True)]
        if set(self.surface_counts()) - {"load_file"}:
            out += ["", "by surface (every device):", "", self.matrix_table(reasons=True, by_surface=True)]
        out += ["", "ok: every file loaded the dtype correctly; FAIL: some did not (first reason shown); "
                "xfail: listed as an expected failure; --: not run"]
        missing = [d for d in TORCH_DTYPES if d not in cov]
        if missing:
            out.append("dtypes no case covered: " + ", ".join(missing))
        out.append("COVERAGE: " + ("FAIL (" + ", ".join(bad) + ")" if bad else "OK")
                   + (f"; expected failures: {', '.join(x)}" if x else ""))
        return "\n".join(out)

    def implementation_defined(self) -> list[Result]:
        return [r for r in self.results if r.outcome == IMPL_DEFINED]

    def to_json(self) -> dict[str, Any]:
        c = self.counts()
        return {
            "loader": self.loader,
            "devices": self.devices,
            "ok": self.ok,
            "interrupted": self.interrupted,
            "seed": self.seed,
            "property_cases": self.property_cases,
            "summary": {k: c[k] for k in OUTCOMES} | {"total": len(self.results)},
            "failed_checks": dict(self.failed_checks()),
            "matrix": {d: {dev: {"passed": p, "total": t} for dev, (p, t) in row.items()}
                       for d, row in self.matrix().items()},
            "coverage": self.coverage_json()["coverage"],
            "surface_coverage": self.coverage_json()["surface_coverage"],
            "surfaces": self.surface_counts(),
            "upstream": self.upstream,
            "differences_from_upstream": {k: [{"case": n, "detail": d} for n, d in v] for k, v in self.info.items()},
            "not_run": [{"what": w, "why": y} for w, y in self.not_run],
            "stale_expected_failures": self.stale_expected,
            "results": [r.to_json() for r in self.results],
        }

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1, ensure_ascii=False)
            f.write("\n")

    def render_info(self) -> list[str]:
        if not self.upstream:
            return []
        out = ["", f"differences from upstream ({self.upstream}; information, not part of the verdict):"]
        labels = {"key_order": "key order of the returned mapping", "error_class": "error class for malformed files"}
        for key, label in labels.items():
            items = self.info.get(key, [])
            out.append(f"  {label}: " + ("same in every case" if not items else f"differs in {len(items)} cases"))
            out += [f"    {n}: {d}" for n, d in items[:5]]
            if len(items) > 5:
                out.append(f"    ... and {len(items) - 5} more (see --json)")
        return out

    def surface_counts(self) -> dict[str, dict[str, int]]:
        """Surface -> outcome -> results."""
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            cell = out.setdefault(r.case.surface, {k: 0 for k in OUTCOMES})
            cell[r.outcome] += 1
        return out

    def render(self, verbose: bool = False) -> str:
        out = [f"loader: {self.loader}   devices: {', '.join(self.devices)}"]
        if self.interrupted:
            out.append(f"INTERRUPTED: the run was stopped; what follows is the {len(self.results)} results judged before")
        if self.seed is not None:
            out.append(f"seed {self.seed} (property cases: {self.property_cases}; reproduce with --seed {self.seed})")
        fails = self.failures()
        if fails:
            out += ["", "failures:"]
            out += [f"  {r.case.name} [{r.device}]: {r.detail}" for r in sorted(fails, key=lambda r: r.case.name)]
        checks = [r for r in self.results if r.case.origin == "check"]
        if checks:
            out += ["", "checks:"]
            out += [f"  {r.case.name:<24} [{r.device}] {r.outcome}: {r.detail}" for r in checks]
        for what, why in self.not_run:
            out.append(f"  not run: {what}: {why}")
        if verbose:
            xf = [r for r in self.results if r.outcome == XFAIL]
            if xf:
                out += ["", "expected failures:"]
                out += [f"  {r.case.name} [{r.device}]: {r.detail}" for r in xf]
            impl = self.implementation_defined()
            if impl:
                out += ["", "implementation-defined (recorded, not judged):"]
                out += [f"  {r.case.name} [{r.device}]: {r.detail}" for r in impl]
        out += self.render_info()
        if self.stale_expected:
            out += ["", "expected-failure entries that matched no case: " + ", ".join(self.stale_expected)]
        out += ["", self.summary_table()]
        surfaces = self.surface_counts()
        if set(surfaces) - {"load_file"}:
            out += ["", "by surface: " + ", ".join(
                f"{s} {c[PASSED] + c[XFAIL] + c[IMPL_DEFINED]}/{sum(c.values())}"
                + (f" ({c[FAILED]} failed)" if c[FAILED] else "") for s, c in surfaces.items())]
        out += ["", "coverage (valid files whose tensors of the dtype loaded correctly / run):", self.matrix_table()]
        if set(surfaces) - {"load_file"}:
            out += ["", "coverage by surface (every device; passed / run):", self.matrix_table(by_surface=True)]
        out += ["", "RESULT: " + ("INTERRUPTED" if self.interrupted else "OK" if self.ok else "FAILED")]
        return "\n".join(out)
