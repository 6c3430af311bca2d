"""Results, the summary table, the dtype x device coverage matrix and the
machine-readable report."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from safeload.conformance.cases import ACCEPT, Case

PASSED = "passed"
FAILED = "failed"
XFAIL = "expected-failure"
XPASS = "unexpected-pass"
IMPL_DEFINED = "implementation-defined"
OUTCOMES = (PASSED, FAILED, XFAIL, XPASS, IMPL_DEFINED)


@dataclasses.dataclass
class Result:
    case: Case
    device: str
    outcome: str
    detail: str
    seconds: float
    observation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        obs = self.observation or {}
        return {
            "case": self.case.name,
            "origin": self.case.origin,
            "expect": self.case.expect,
            "device": self.device,
            "outcome": self.outcome,
            "detail": self.detail,
            "seconds": round(self.seconds, 4),
            "accepted": obs.get("accepted"),
            "error_type": obs.get("error_type"),
            "error_code": obs.get("error_code"),
        }


@dataclasses.dataclass
class Report:
    loader: str
    devices: list[str]
    seed: int | None = None
    property_cases: int = 0
    expected_failures: dict[str, str] = dataclasses.field(default_factory=dict)
    results: list[Result] = dataclasses.field(default_factory=list)
    stale_expected: list[str] = dataclasses.field(default_factory=list)

    def add(self, result: Result) -> None:
        self.results.append(result)

    def counts(self) -> Counter:
        return Counter(r.outcome for r in self.results)

    @property
    def ok(self) -> bool:
        """True only if nothing unexpected happened."""
        c = self.counts()
        return c[FAILED] == 0 and c[XPASS] == 0

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.outcome in (FAILED, XPASS)]

    def by_name(self, device: str | None = None) -> dict[str, Result]:
        return {r.case.name: r for r in self.results if device is None or r.device == device}

    def matrix(self) -> dict[str, dict[str, tuple[int, int]]]:
        """dtype -> device -> (passed, total) over cases that must load."""
        m: dict[str, dict[str, list[int]]] = {}
        for r in self.results:
            if r.case.expect != ACCEPT:
                continue
            for dtype in r.case.dtypes():
                cell = m.setdefault(dtype, {}).setdefault(r.device, [0, 0])
                cell[1] += 1
                cell[0] += r.outcome == PASSED
        return {d: {dev: (p, t) for dev, (p, t) in row.items()} for d, row in m.items()}

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
        return "\n".join(lines)

    def matrix_table(self) -> str:
        m = self.matrix()
        if not m:
            return "(no valid cases ran)"
        from safeload.conformance.cases import TORCH_DTYPES

        order = {d: i for i, d in enumerate(TORCH_DTYPES)}
        dtypes = sorted(m, key=lambda d: (order.get(d, len(order)), d))
        devices = self.devices
        width = max(len(d) for d in dtypes + ["dtype"])
        header = f"{'dtype':<{width}}  " + "  ".join(f"{dev:>12}" for dev in devices)
        lines = [header, "-" * len(header)]
        for d in dtypes:
            cells = []
            for dev in devices:
                p, t = m[d].get(dev, (0, 0))
                mark = "ok" if p == t and t else ("--" if not t else "FAIL")
                cells.append(f"{mark + ' ' + str(p) + '/' + str(t):>12}")
            lines.append(f"{d:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)

    def implementation_defined(self) -> list[Result]:
        return [r for r in self.results if r.outcome == IMPL_DEFINED]

    def to_json(self) -> dict[str, Any]:
        c = self.counts()
        return {
            "loader": self.loader,
            "devices": self.devices,
            "ok": self.ok,
            "seed": self.seed,
            "property_cases": self.property_cases,
            "summary": {k: c[k] for k in OUTCOMES} | {"total": len(self.results)},
            "matrix": {d: {dev: {"passed": p, "total": t} for dev, (p, t) in row.items()}
                       for d, row in self.matrix().items()},
            "stale_expected_failures": self.stale_expected,
            "results": [r.to_json() for r in self.results],
        }

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1, ensure_ascii=False)
            f.write("\n")

    def render(self, verbose: bool = False) -> str:
        out = [f"loader: {self.loader}   devices: {', '.join(self.devices)}"]
        if self.seed is not None:
            out.append(f"property cases: {self.property_cases} from seed {self.seed} (reproduce with --seed {self.seed})")
        fails = self.failures()
        if fails:
            out += ["", "failures:"]
            out += [f"  {r.case.name} [{r.device}]: {r.detail}" for r in sorted(fails, key=lambda r: r.case.name)]
        if verbose:
            xf = [r for r in self.results if r.outcome == XFAIL]
            if xf:
                out += ["", "expected failures:"]
                out += [f"  {r.case.name} [{r.device}]: {r.detail}" for r in xf]
            impl = self.implementation_defined()
            if impl:
                out += ["", "implementation-defined (recorded, not judged):"]
                out += [f"  {r.case.name} [{r.device}]: {r.detail}" for r in impl]
        if self.stale_expected:
            out += ["", "expected-failure entries that matched no case: " + ", ".join(self.stale_expected)]
        out += ["", self.summary_table(), "", "coverage (valid cases passed / run, by dtype and device):",
                self.matrix_table(), "", "RESULT: " + ("OK" if self.ok else "FAILED")]
        return "\n".join(out)
