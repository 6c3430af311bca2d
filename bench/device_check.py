#!/usr/bin/env python3
"""The device check: everything safeload wants to know from a GPU machine, in one time-boxed run.

    make device-prep                   # here, with network: peer wheels into .whl/, headers into .deps/
    make device-check OUT=dir          # there: build, CUDA tests, conformance, benchmarks
    make device-check OUT=dir DRY=1    # anywhere: the same steps, the device parts skipped

It runs on a machine with CUDA, no network and a preinstalled torch (python3 there), from a copy
of the working tree with ``.whl`` and ``.deps`` beside it. The steps, in order, each in its own
time box so that a slow step cannot eat the rest (``--budget`` seconds in all, 470 by default):

1. ``machine``: GPU, driver, torch, CPU, memory, the storage under the working tree;
2. ``peers``: safetensors 0.9 into a virtual environment of its own (it cannot share one with the
   preinstalled 0.8), fastsafetensors and InstantTensor into a directory on PYTHONPATH, all from
   the carried wheels;
3. ``build``: the extension against that machine's torch (CMake, in ``build-device/``);
4. ``tests``: the CUDA tests (``tests/python/test_cuda.py`` and every other test with ``cuda`` in
   its name);
5. ``conform``: ``safeload conform --loader safeload_fast --device cuda``;
6. ``bench``: ``safeload bench --device cuda`` against every peer that runs there, cold and warm,
   with the storage, pinned host-to-device and memcpy limits in the same run;
7. ``models``: ``python -m safeload.bench.models --device cuda``: one checkpoint as 1 and 16
   shards, ``load_checkpoint`` and every peer, and ``from_pretrained(device_map="cuda")`` as shipped
   and under ``safeload.patch()``.

Everything lands in OUT, in at most 8 files (what the device tool brings back): ``summary.json``
(the machine and each step's status, time and command), ``device-check.log`` (every step's
output), ``cuda-bench.json``, ``cuda-models.json``, ``conform-cuda.json``.

Without CUDA (or with ``--dry-run``), the same steps run with the device parts skipped, each with
a line saying so: the machine is described, the build step checks the in-place extension imports,
and the commands of the test, conformance and benchmark steps run on the CPU at the smallest
size, so that their arguments cannot rot. ``make test`` runs this dry mode.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = os.path.join(ROOT, ".whl")
DEPS = os.path.join(ROOT, ".deps")
ST09_ENV = "/tmp/safeload-st09"
PEERS_DIR = "/tmp/safeload-peers"

# (name, longest time box in seconds, least time worth starting it with)
STEPS = (
    ("machine", 20, 5),
    ("peers", 60, 10),
    ("build", 200, 60),
    ("tests", 75, 20),
    ("conform", 75, 20),
    ("bench", 150, 40),
    ("models", 100, 30),
)


class Check:
    def __init__(self, out: str, budget: float, dry: bool, python: str):
        self.out = out
        self.dry = dry
        self.python = python
        self.deadline = time.monotonic() + budget
        self.log = open(os.path.join(out, "device-check.log"), "a", encoding="utf-8")
        self.summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dry_run": dry, "budget_s": budget,
                              "steps": []}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "python"),
                                                             self.env.get("PYTHONPATH")) if p)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.has_cuda = False
        # Files a dry run writes besides its results (a small model, a benchmark file).
        self.scratch = tempfile.mkdtemp(prefix="safeload-device-check-")

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def time_box(self, name: str) -> float | None:
        """Seconds this step may take: its own limit, less what the steps after it need."""
        index = [s[0] for s in STEPS].index(name)
        longest, least = STEPS[index][1], STEPS[index][2]
        reserve = sum(s[2] for s in STEPS[index + 1:])
        left = self.deadline - time.monotonic() - reserve
        return None if left < least else min(longest, left)

    def run(self, name: str, argv: list[str], timeout: float, env: dict | None = None) -> tuple[str, float]:
        """Runs one command of a step; its output goes to the log. (status, seconds)."""
        self.say(f"[{name}] $ {shlex.join(argv)}")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=ROOT, env=env or self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout, start_new_session=True)
            status = "ok" if proc.returncode == 0 else f"failed (exit status {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
        except OSError as e:
            status = f"could not start: {e}"
        self.log.flush()
        return status, time.monotonic() - t0

    def step(self, name: str, fn) -> None:
        box = self.time_box(name)
        record: dict = {"step": name}
        if box is None:
            record["status"] = "skipped: no time left in the budget"
        else:
            t0 = time.monotonic()
            try:
                record.update(fn(box))
            except Exception as e:  # a broken step is reported; the next one still runs
                record["status"] = f"failed: {type(e).__name__}: {e}"
            record["seconds"] = round(time.monotonic() - t0, 1)
        self.summary["steps"].append(record)
        self.say(f"[{name}] {record['status']}" + (f" ({record['seconds']} s)" if "seconds" in record else ""))
        self.write_summary()

    def write_summary(self) -> None:
        with open(os.path.join(self.out, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(self.summary, f, indent=1)


# --- the steps ---------------------------------------------------------------------------------


def machine(check: Check, box: float) -> dict:
    probe = r"""
import json, os, platform, shutil
out = {"python": platform.python_version(), "cpus": os.cpu_count()}
try:
    out["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
except (ValueError, OSError):
    pass
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "memory_bytes": p.total_memory, "count": torch.cuda.device_count(),
                      "cuda_runtime": torch.version.cuda}
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
for dist in ("safetensors", "transformers", "numpy", "hypothesis", "pybind11", "scikit-build-core"):
    try:
        from importlib import metadata
        out.setdefault("packages", {})[dist] = metadata.version(dist)
    except Exception:
        out.setdefault("packages", {})[dist] = None
out["disk"] = shutil.disk_usage(".")._asdict()
print(json.dumps(out))
"""
    proc = subprocess.run([check.python, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=box)
    info = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-2000:]}
    info["platform"] = platform.platform()
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=box)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    df = subprocess.run(["df", "-hT", ROOT], capture_output=True, text=True)
    info["storage"] = df.stdout.strip().splitlines()[-1] if df.returncode == 0 else None
    check.summary["machine"] = info
    check.has_cuda = bool(info.get("cuda")) and not check.dry
    gpu = info.get("gpu", {}).get("name", "no CUDA device")
    return {"status": f"ok: {gpu}, torch {info.get('torch')}, {info.get('cpus')} CPUs"}


def peers(check: Check, box: float) -> dict:
    wheels = sorted(glob.glob(os.path.join(WHEELS, "*.whl")))
    names = [os.path.basename(w) for w in wheels]
    if not check.has_cuda:
        return {"status": f"skipped (no CUDA device): the carried wheels are the device's ({len(wheels)} in .whl)",
                "wheels": names}
    if not wheels:
        return {"status": "skipped: no wheels in .whl (run 'make device-prep' with network, then carry .whl)"}
    st09 = [w for w in wheels if os.path.basename(w).startswith("safetensors-0.9")]
    others = [w for w in wheels if w not in st09]
    pip = ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    statuses = []
    t_end = time.monotonic() + box
    if st09:
        status, _ = check.run("peers", [check.python, "-m", "venv", "--system-site-packages", ST09_ENV],
                              max(1.0, t_end - time.monotonic()))
        if status == "ok":
            status, _ = check.run("peers", [os.path.join(ST09_ENV, "bin", "python"), *pip, *st09],
                                  max(1.0, t_end - time.monotonic()))
        statuses.append(f"safetensors 0.9 env: {status}")
        if status == "ok":
            check.st09 = os.path.join(ST09_ENV, "bin", "python")
    if others:
        status, _ = check.run("peers", [check.python, *pip, "--target", PEERS_DIR, *others],
                              max(1.0, t_end - time.monotonic()))
        statuses.append(f"other peers: {status}")
        if status == "ok":
            check.env["PYTHONPATH"] = os.pathsep.join((check.env["PYTHONPATH"], PEERS_DIR))
    failed = any("ok" not in s for s in statuses)
    return {"status": ("failed: " if failed else "ok: ") + "; ".join(statuses), "wheels": names}


def cmake_command(check: Check, build_dir: str) -> list[list[str]]:
    configure = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython3_EXECUTABLE={check.python}", "-DSAFELOAD_TESTS=OFF", "-DSAFELOAD_FUZZ=OFF",
                 "-DSAFELOAD_INSTALL=OFF"]
    carried = glob.glob(os.path.join(DEPS, "nlohmann", "usr", "share", "cmake", "nlohmann_json"))
    if carried:
        configure.append(f"-Dnlohmann_json_DIR={carried[0]}")
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    return [configure, ["cmake", "--build", build_dir, "--parallel", str(os.cpu_count() or 2),
                        "--target", "safeload_python"]]


def build(check: Check, box: float) -> dict:
    build_dir = os.path.join(ROOT, "build-device")
    commands = cmake_command(check, build_dir)
    if not check.has_cuda:
        # The device's build is not this machine's: check the commands exist and the in-place
        # extension (built by `make build`) imports, which every later step needs.
        missing = [c[0] for c in commands if shutil.which(c[0]) is None]
        status, _ = check.run("build", [check.python, "-c", "import safeload; print(safeload.__file__)"], box)
        return {"status": f"skipped (no CUDA device): would run {' && '.join(shlex.join(c) for c in commands)}; "
                          f"in-place extension: {status}" + (f"; missing: {missing}" if missing else ""),
                "commands": [shlex.join(c) for c in commands]}
    t_end = time.monotonic() + box
    for argv in commands:
        status, _ = check.run("build", argv, max(1.0, t_end - time.monotonic()))
        if status != "ok":
            return {"status": f"failed: {status}", "commands": [shlex.join(c) for c in commands]}
    status, _ = check.run("build", [check.python, "-c", "import safeload._C"], max(1.0, t_end - time.monotonic()))
    check.built = status == "ok"
    return {"status": status, "commands": [shlex.join(c) for c in commands]}


def tests(check: Check, box: float) -> dict:
    argv = [check.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/python/test_cuda.py"]
    if check.has_cuda:
        others = ["tests/python/test_fast.py", "tests/python/test_reference.py", "tests/python/test_safe_open.py",
                  "tests/python/test_checkpoint.py", "tests/python/test_conformance_checks.py"]
        argv = [*argv[:-1], "tests/python/test_cuda.py", *others, "-k", "cuda"]
    status, _ = check.run("tests", argv, box)
    return {"status": _dry(check) + status, "command": shlex.join(argv)}


def _dry(check: Check) -> str:
    return "" if check.has_cuda else "dry run on cpu (no CUDA device): "


def conform(check: Check, box: float) -> dict:
    argv = [check.python, "-m", "safeload", "conform", "--loader", "safeload_fast", "--timeout", "60"]
    if check.has_cuda:
        argv += ["--device", "cuda", "--property-cases", "50", "--json", os.path.join(check.out, "conform-cuda.json")]
    else:
        argv += ["--device", "cpu", "-k", "y_dtype_F32", "--property-cases", "0", "--checks", "none",
                 "--no-generated", "--upstream", "none", "--json", os.path.join(check.out, "conform-dry.json")]
    status, _ = check.run("conform", argv, box)
    return {"status": _dry(check) + status, "command": shlex.join(argv)}


def bench(check: Check, box: float) -> dict:
    argv = [check.python, "-m", "safeload", "bench", "--no-progress", "--timeout", "120"]
    if check.has_cuda:
        argv += ["--device", "cuda", "--size", "2GiB", "--rounds", "3", "--json", os.path.join(check.out, "cuda-bench.json")]
        if getattr(check, "st09", None):
            argv += ["--python", f"st09={check.st09}"]
    else:
        argv += ["--device", "cpu", "--size", "64MiB", "--rounds", "1", "--condition", "warm", "--loaders",
                 "safeload-fast", "--settle", "0", "--cache-dir", os.path.join(check.scratch, "bench-files"),
                 "--json", os.path.join(check.out, "bench-dry.json")]
    status, _ = check.run("bench", argv, box)
    return {"status": _dry(check) + status, "command": shlex.join(argv)}


def models(check: Check, box: float) -> dict:
    argv = [check.python, "-m", "safeload.bench.models", "--no-progress", "--timeout", "120"]
    if check.has_cuda:
        argv += ["--device", "cuda", "--shards", "1,16", "--rounds", "2", "--dir", "/tmp/safeload-llama-shards",
                 "--ways", "safeload-checkpoint,safetensors,safetensors-pread,fastsafetensors,instanttensor,"
                           "transformers,transformers-patched",
                 "--json", os.path.join(check.out, "cuda-models.json")]
    else:
        argv += ["--device", "cpu", "--shards", "2", "--rounds", "1", "--condition", "warm", "--settle", "0",
                 "--hidden", "64", "--layers", "1", "--vocab", "256", "--dir", os.path.join(check.scratch, "llama"),
                 "--ways", "safeload-checkpoint,transformers-patched", "--json", os.path.join(check.out, "models-dry.json")]
    status, _ = check.run("models", argv, box)
    return {"status": _dry(check) + status, "command": shlex.join(argv)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the results (created)")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for every step together (default 470)")
    p.add_argument("--dry-run", action="store_true", help="skip the device parts even where CUDA is present")
    p.add_argument("--python", default=sys.executable, help="the interpreter whose torch to build against and run")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    check = Check(os.path.abspath(args.out), args.budget, args.dry_run, args.python)
    check.say(f"device check of {ROOT} into {check.out}, budget {args.budget:.0f} s"
              + (" (dry run)" if args.dry_run else ""))
    for name, fn in (("machine", machine), ("peers", peers), ("build", build), ("tests", tests),
                     ("conform", conform), ("bench", bench), ("models", models)):
        check.step(name, lambda box, fn=fn: fn(check, box))
        if name == "machine" and not check.has_cuda:
            check.say("no CUDA device here" + (" (dry run asked)" if args.dry_run else "")
                      + ": every device part is skipped, and the steps' commands run on the cpu at the smallest size")
        if name == "build" and check.has_cuda and not getattr(check, "built", False):
            check.say("the build failed: the steps that need the extension cannot run")
            break
    failed = [s["step"] for s in check.summary["steps"] if "failed" in s["status"] or "timed out" in s["status"]]
    check.summary["failed"] = failed
    check.write_summary()
    shutil.rmtree(check.scratch, ignore_errors=True)
    check.say("device check: " + ("every step ran" if not failed else f"failed steps: {', '.join(failed)}")
              + f"; summary in {os.path.join(check.out, 'summary.json')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
