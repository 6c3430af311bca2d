"""The device check (bench/device_check.py) in its dry mode, so that the script
a GPU machine runs cannot rot while no GPU is at hand: every step runs, the
device parts are skipped with a line saying so, and the commands of the test,
conformance and benchmark steps run on the CPU at their smallest size."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCRIPT = os.path.join(ROOT, "bench", "device_check.py")
STEPS = ["machine", "peers", "build", "tests", "conform", "bench", "models"]


def load_script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_step_and_skips_the_device_parts(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--dry-run", "--python", sys.executable],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert summary["dry_run"] is True and summary["failed"] == []
    assert steps["machine"]["status"].startswith("ok"), steps["machine"]
    assert summary["machine"]["torch"], summary["machine"]
    for name in ("peers", "build"):
        assert steps[name]["status"].startswith("skipped (no CUDA device)"), steps[name]
    for name in ("tests", "conform", "bench", "models"):
        assert steps[name]["status"] == "dry run on cpu (no CUDA device): ok", steps[name]
    assert "no CUDA device here" in proc.stdout
    # What comes back from a GPU machine: a few plain files, nothing else.
    entries = sorted(os.listdir(out))
    assert all((out / e).is_file() for e in entries) and len(entries) <= 8, entries
    assert "device-check.log" in entries and "conform-dry.json" in entries


def test_a_step_gets_its_time_box_less_what_the_later_steps_need(tmp_path):
    dc = load_script()
    least_after = {name: sum(s[2] for s in dc.STEPS[i + 1:]) for i, (name, _, _) in enumerate(dc.STEPS)}
    roomy = dc.Check(str(tmp_path), 10_000, True, sys.executable)
    assert roomy.time_box("build") == dict((s[0], s[1]) for s in dc.STEPS)["build"]
    # With just enough for the steps after it and the least it needs, a step gets that least.
    tight = dc.Check(str(tmp_path), least_after["bench"] + 45, True, sys.executable)
    assert 40 <= tight.time_box("bench") <= 45
    # With less, it is skipped rather than starved.
    short = dc.Check(str(tmp_path), least_after["bench"] + 10, True, sys.executable)
    assert short.time_box("bench") is None


def test_the_makefile_target_needs_an_output_directory():
    proc = subprocess.run(["make", "-s", "-C", ROOT, "device-check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "OUT=DIR" in proc.stdout + proc.stderr
