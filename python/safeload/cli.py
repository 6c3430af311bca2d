"""Command line: ``safeload inspect|conform|bench|demo``.

Each subcommand lives in its own module and is imported only when used, so
``safeload inspect`` does not pay for the benchmark's or the harness's imports.
Every subcommand module exposes ``main(argv: list[str]) -> int``.
"""
from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "inspect": ("safeload.inspect", "print a file's validated header as a table"),
    "conform": ("safeload.conformance.cli", "run the conformance suite against a loader"),
    "bench": ("safeload.bench.cli", "benchmark loaders against the hardware's limits"),
    "demo": ("safeload.demo", "write, inspect, load and verify a model-shaped file"),
}


def _usage() -> str:
    lines = ["usage: safeload COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in _COMMANDS.items()]
    lines += ["", "Run 'safeload COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        print(f"safeload: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from safeload._extension import ExtensionMissing

    try:
        module = importlib.import_module(_COMMANDS[command][0])
        return int(module.main(rest) or 0)
    except ExtensionMissing as e:  # every command but conform needs the compiled extension
        print(f"safeload {command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback, and the shell's status for it
        print(f"\nsafeload {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
