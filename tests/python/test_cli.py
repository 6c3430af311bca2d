"""The command line as a user meets it: ``safeload inspect`` on a whole checkpoint, and the
progress of ``safeload conform``.

Expectations come from the writer (the shard files transformers wrote, the model's own
tensors), never from safeload's code; the commands run as a user runs them, in a child
process with stderr not a terminal unless a pseudo-terminal is given.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import safeload  # noqa: F401  (where the package lives, for the children)

transformers = pytest.importorskip("transformers")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(safeload.__file__)))


def run_cli(*args, timeout=300, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "safeload", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A model saved by transformers as several shards with an index, and what the writer
    put in it: the shard file names on disk and every tensor's dtype and byte size."""
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    root = tmp_path_factory.mktemp("inspect") / "model"
    model.save_pretrained(root, max_shard_size="100KB")
    state = model.state_dict()
    shards = sorted(f for f in os.listdir(root) if f.endswith(".safetensors"))
    assert len(shards) > 2, shards
    return {"dir": root, "shards": shards, "tensors": {k: (str(v.dtype), v.numel() * v.element_size())
                                                       for k, v in state.items()}}


def inspect_json(*args):
    proc = run_cli("inspect", "--json", *args)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def check_whole(report, written):
    assert report["valid"] and report["verdict"] == {"valid": True}
    assert [os.path.basename(s["path"]) for s in report["shards"]] == written["shards"]
    s = report["summary"]
    assert s["shards"] == len(written["shards"]) and s["invalid_shards"] == 0
    assert s["tensors"] == len(written["tensors"])
    assert s["data_bytes"] == sum(n for _, n in written["tensors"].values())
    assert s["file_bytes"] == sum(os.path.getsize(written["dir"] / f) for f in written["shards"])
    assert s["dtypes"] == {"BF16": {"tensors": len(written["tensors"]),
                                    "bytes": sum(n for _, n in written["tensors"].values())}}
    listed = {t[0] for shard in report["shards"] for t in shard["header"]["tensors"]}
    assert listed == set(written["tensors"])


def test_inspect_a_transformers_checkpoint_by_directory_and_by_index(written):
    for source in (written["dir"], written["dir"] / "model.safetensors.index.json"):
        code, report, err = inspect_json(str(source))
        assert code == 0, err
        check_whole(report, written)
        assert report["index"].endswith("model.safetensors.index.json")
        assert report["summary"]["index_metadata"]["total_size"] == sum(n for _, n in written["tensors"].values())


def test_inspect_a_cache_snapshot_of_symbolic_links(written, tmp_path):
    """The Hugging Face cache layout: content-addressed blobs, a snapshot directory of links."""
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(written["dir"]))):
        blob = repo / "blobs" / f"blob{i:04d}"
        shutil.copyfile(written["dir"] / name, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    code, report, err = inspect_json(str(snapshot))
    assert code == 0, err
    check_whole(report, dict(written, dir=written["dir"]))


def test_inspect_text_summary_and_filter(written):
    proc = run_cli("inspect", str(written["dir"]), "--summary")
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoint of {len(written['shards'])} shards" in proc.stdout
    assert f"{len(written['tensors'])} tensors" in proc.stdout
    assert "verdict: valid" in proc.stdout
    assert all(f in proc.stdout for f in written["shards"])
    assert "offsets" not in proc.stdout  # the summary alone: no tensor table
    wanted = sorted(n for n in written["tensors"] if n.startswith("model.layers.1.mlp."))
    proc = run_cli("inspect", str(written["dir"]), "-k", "model.layers.1.mlp.*")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("model.layers.")]
    assert sorted(rows) == wanted


def test_inspect_names_a_broken_shard_with_its_code(written, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(written["dir"], broken)
    victim = written["shards"][1]
    with open(broken / victim, "r+b") as f:
        f.truncate(os.path.getsize(broken / victim) - 3)
    code, report, _ = inspect_json(str(broken))
    assert code == 1
    assert not report["valid"]
    bad = [s for s in report["shards"] if not s["valid"]]
    assert [os.path.basename(s["path"]) for s in bad] == [victim]
    assert bad[0]["code"] == "METADATA_INCOMPLETE_BUFFER"
    assert report["verdict"]["code"] == "METADATA_INCOMPLETE_BUFFER"
    proc = run_cli("inspect", str(broken), "--summary")
    assert proc.returncode == 1
    assert any(victim in line and "INVALID (METADATA_INCOMPLETE_BUFFER)" in line for line in proc.stdout.splitlines())


def test_inspect_reports_an_index_that_disagrees_with_valid_shards(written, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(written["dir"], moved)
    index = json.loads((moved / "model.safetensors.index.json").read_text())
    name, shard = next(iter(index["weight_map"].items()))
    index["weight_map"][name] = next(f for f in written["shards"] if f != shard)
    (moved / "model.safetensors.index.json").write_text(json.dumps(index))
    code, report, _ = inspect_json(str(moved))
    assert code == 1
    assert all(s["valid"] for s in report["shards"])
    assert report["verdict"]["code"] == "INVALID_INDEX" and name in report["verdict"]["message"]


# --- conform progress ------------------------------------------------------------------------

SLOW_LOADER = textwrap.dedent("""
    import time
    import safetensors.torch

    def load_file(path, device):
        time.sleep(0.4)
        return safetensors.torch.load_file(path, device=device)
""")


def conform_args(tmp_path, *extra):
    loader = tmp_path / "slow_loader.py"
    loader.write_text(SLOW_LOADER)
    return ("conform", "--loader", f"{loader}:load_file", "-k", "y_dtype_F*", "--property-cases", "0", "--checks",
            "none", "--no-generated", "--upstream", "none", *extra)


def test_conform_writes_progress_lines_to_a_log(tmp_path):
    proc = run_cli(*conform_args(tmp_path, "--progress-every", "0.5", "--json", "-"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("conform: cases ")]
    assert len(lines) >= 3, proc.stderr
    assert any("running y_dtype_F" in line for line in lines), lines
    import re

    last = re.match(r"conform: cases (\d+)/(\d+) done, 0 failed", lines[-1])
    assert last and last.group(1) == last.group(2) and int(last.group(1)) >= 10, lines
    assert json.loads(proc.stdout)["ok"] is True  # stdout stays the report alone


def test_conform_quiet_prints_no_progress(tmp_path):
    proc = run_cli(*conform_args(tmp_path, "--progress-every", "0.5", "--quiet"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "conform: cases" not in proc.stderr and "[####" not in proc.stderr
    assert "RESULT: OK" in proc.stdout


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_bar_on_a_terminal_with_failures_and_the_current_case():
    from safeload.conformance.progress import Progress

    now = [0.0]
    term = FakeTerminal()
    p = Progress(term, clock=lambda: now[0])
    assert p.mode == "bar"
    p.phase("cases", 4)
    for i, failed in enumerate([False, True, False, False]):
        now[0] += 1
        p.start(f"case{i} [cpu]")
        now[0] += 1
        p.done(failed=failed)
    p.log("FAIL case1 [cpu]: wrong bytes")
    p.close()
    frames = [f for f in term.getvalue().split("\r") if f.startswith("conform cases")]
    assert any("2/4" in f and "1 failed" in f and "case1 [cpu]" in f for f in frames), frames
    assert frames[-1].startswith("conform cases [####################]    4/4")
    assert "FAIL case1 [cpu]: wrong bytes\n" in term.getvalue()
    plain = io.StringIO()
    assert Progress(plain).mode == "lines"
