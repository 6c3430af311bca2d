"""``safeload conform``: run the conformance suite against a loader.

Exit status: 0 if nothing unexpected happened (or the loader's package is not
installed and it was skipped), 1 on any failure or unexpected pass, 2 on a
usage error or a loader that cannot start, 130 when stopped by Ctrl-C or
SIGTERM (the report of what was done is printed first).
"""
from __future__ import annotations

import argparse
import json
import sys

from safeload.conformance.adapters import ADAPTERS

EPILOG = "shipped adapters (use as --loader NAME):\n" + "\n".join(
    f"  {name:<22} {desc}" for name, desc in ADAPTERS.items()
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="safeload conform",
        description="Judge a safetensors loader against the fixture corpus and property-based cases. "
        "A loader is any callable (path, device) -> Mapping[str, torch.Tensor] that raises on invalid input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--loader", required=True,
                   help="MODULE:FUNC (its load_file alone), MODULE (every surface it defines: load_file, load, "
                        "safe_open; MODULE may be a path to a .py file), exec:CMD, or a shipped adapter's name")
    p.add_argument("--device", action="append", dest="devices",
                   help="device to load onto (repeatable; default cpu)")
    p.add_argument("--cases", help="corpus directory holding manifest.json (default: the bundled corpus)")
    p.add_argument("-k", "--select", action="append", default=[], metavar="PATTERN",
                   help="run only the cases whose name matches this glob (repeatable): corpus files, through "
                        "every surface, or a surface's case such as 'get_slice:*f4_2d*'")
    p.add_argument("--expected-failures", metavar="FILE", help="expected-failure list ('NAME  # reason' per line)")
    p.add_argument("--json", metavar="OUT", help="write a machine-readable report here ('-': stdout)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds per case before it counts as a hang")
    p.add_argument("--jobs", type=int, default=1, help="worker processes per device (default 1)")
    p.add_argument("--property-cases", type=int, default=200, metavar="N",
                   help="Hypothesis-generated cases to add (default 200; 0 disables)")
    p.add_argument("--seed", type=int, default=0, help="seed of the property-based cases (default 0)")
    p.add_argument("--index-cases", type=int, default=100, metavar="N",
                   help="get_slice indexes drawn by Hypothesis, beside the fixed corner cases (default 100)")
    p.add_argument("--reference", default="safeload_reference",
                   help="loader whose verdicts the corrupted property cases expect (default: safeload's reference)")
    p.add_argument("--strict-codes", action="store_true",
                   help="also require SafetensorError codes to match the manifest (for safeload's own loaders)")
    p.add_argument("--checks", default="all", metavar="LIST",
                   help="named checks to run: 'all' (default), 'none', or a comma-separated list of "
                        "leak_fds, leak_threads, leak_memory, thread_safety, process_safety, file_independence")
    p.add_argument("--no-generated", dest="generated", action="store_false",
                   help="skip the run-time files of tens of MiB across chunk boundaries")
    p.add_argument("--large", action="store_true",
                   help="also a tensor and a file over 4 GiB (32-bit offset bugs; needs ~10 GiB of disk and memory)")
    p.add_argument("--upstream", default="auto", metavar="LOADER",
                   help="compare key order and error classes with this loader, as information "
                        "(default: safetensors_torch when installed; 'none' to skip)")
    p.add_argument("--python", metavar="INTERPRETER",
                   help="run the loader under this Python (e.g. a virtual environment with another version of a peer)")
    p.add_argument("--coverage", action="store_true",
                   help="print only the dtype coverage matrix of the valid cases (with --json -, as JSON on stdout)")
    p.add_argument("-v", "--verbose", action="store_true", help="also list expected failures and implementation-defined behaviour")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress on stderr (by default: a bar on a terminal, elsewhere a line every few seconds)")
    p.add_argument("--progress-every", type=float, default=None, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal (default 5)")
    return p


def _spec(name: str) -> str:
    from safeload.conformance.adapters import spec

    return spec(name) if name in ADAPTERS else name


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from safeload.conformance.cases import load_corpus
    from safeload.conformance.expected import ExpectedFailuresError, load_expected_failures
    from safeload.conformance.runner import LoaderUnavailable, WorkerStartError, run

    from safeload.conformance.cases import ACCEPT
    from safeload.conformance.checks import CHECKS

    loader = _spec(args.loader)
    if args.checks == "all":
        checks = list(CHECKS)
    elif args.checks == "none":
        checks = []
    else:
        checks = [c.strip() for c in args.checks.split(",") if c.strip()]
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            print(f"safeload conform: unknown checks {unknown}; known: {', '.join(CHECKS)}", file=sys.stderr)
            return 2
    try:
        # A surface's pattern ("load:y_*", "get_slice:*") selects among that surface's cases.
        corpus_patterns = [p.split(":", 1)[1] if ":" in p else p for p in args.select]
        cases = load_corpus(args.cases, corpus_patterns)
        xfail = load_expected_failures(args.expected_failures)
    except (OSError, ValueError, ExpectedFailuresError) as e:
        print(f"safeload conform: {e}", file=sys.stderr)
        return 2
    if args.coverage:  # only what says something about dtypes
        cases = [c for c in cases if c.expect == ACCEPT]
        checks = []
    if not cases and args.property_cases <= 0 and not args.generated and not any(":" in p for p in args.select):
        print("safeload conform: no cases selected", file=sys.stderr)
        return 2
    upstream = None if args.upstream == "none" or args.coverage else args.upstream
    if upstream == "auto":
        upstream = None
        if loader != _spec("safetensors_torch") and not args.select:
            import importlib.util

            if importlib.util.find_spec("safetensors") is not None:
                upstream = _spec("safetensors_torch")
    elif upstream is not None:
        upstream = _spec(upstream)

    from safeload.conformance.progress import EVERY_S, Progress

    progress = Progress(sys.stderr, mode="quiet" if args.quiet else "auto",
                        every=args.progress_every if args.progress_every is not None else EVERY_S)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import signal

    def terminated(signum, frame):  # SIGTERM stops the run as Ctrl-C does: the report of what was done
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        report = run(
            loader,
            devices=args.devices or ["cpu"],
            cases=cases,
            expected_failures=xfail,
            timeout=args.timeout,
            jobs=args.jobs,
            strict_codes=args.strict_codes,
            property_cases=max(0, args.property_cases),
            seed=args.seed,
            reference=_spec(args.reference),
            checks=checks,
            generated=args.generated,
            large=args.large,
            upstream=upstream,
            python=args.python,
            log=log,
            progress=progress,
            select=args.select,
            index_cases=max(0, args.index_cases),
        )
    except LoaderUnavailable as e:
        print(f"SKIPPED {args.loader}: {e}")
        return 0
    except WorkerStartError as e:
        print(f"safeload conform: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    status = 130 if report.interrupted else 0 if report.ok else 1
    if args.coverage:
        if args.json == "-":
            print(json.dumps(report.coverage_json(), indent=1))
        else:
            print(report.render_coverage())
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(report.coverage_json(), f, indent=1)
        return status
    if args.json == "-":
        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    else:
        print(report.render(verbose=args.verbose))
        if args.json:
            report.write_json(args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
