"""``safeload bench --safe-open``: what a caller of ``safe_open`` pays for what it asks.

Four callers, each in a fresh process per run, against every ``safe_open`` installed:

- ``one tensor``: ``get_tensor`` of the 2-D tensor nearest 1/64 of the file in size;
- ``quarter of rows``: ``get_slice(name)[r:r + rows/4]`` of the largest 2-D tensor
  (a tensor-parallel rank's rows, from the second quarter);
- ``quarter of columns``: ``get_slice(name)[:, c:c + cols/4]`` of the same tensor;
- ``every tensor``: ``keys()``, then ``get_tensor`` of each, as transformers reads a shard.

Timed: from ``safe_open`` until every byte of the result has been read once (a mapped
result pays for its pages). Counted: the bytes this process made the kernel read from
storage (``read_bytes`` of ``/proc/self/io``: page faults on a mapping and the kernel's
read-ahead included), shown against the bytes asked for. Cold runs evict the file
(``posix_fadvise DONTNEED``) before their settle wait; warm runs find it resident.
safeload's rows also give its report (reads, read-ahead).

Order: for each condition and round, every (caller, way) once, in the same order.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

TASKS = ("one tensor", "quarter of rows", "quarter of columns", "every tensor")
#: (key, label, environment or None, backend or None)
WAYS = (
    ("safeload", "safeload safe_open", None, None),
    ("safetensors", "safetensors safe_open (mmap)", None, None),
    ("safetensors-pread", "safetensors safe_open (pread)", None, "pread"),
    ("safetensors-0.9", "safetensors 0.9 safe_open (mmap)", "st09", None),
    ("safetensors-0.9-pread", "safetensors 0.9 safe_open (pread)", "st09", "pread"),
)


def targets(path: str) -> dict:
    """The tensors and indexes each caller asks for, chosen from the header alone."""
    import safeload

    header = safeload.read_header(path)
    matrices = [t for t in header["tensors"] if len(t[2]) == 2 and t[2][0] >= 4 and t[2][1] >= 4]
    if not matrices:
        raise SystemExit(f"safeload bench --safe-open: {path} has no matrix of at least 4 x 4 to slice")
    size = header["data_length"]
    one = min(matrices, key=lambda t: (abs((t[4] - t[3]) - size / 64), t[3]))
    big = max(matrices, key=lambda t: (t[4] - t[3], -t[3]))
    rows, cols = big[2]
    r, c = rows // 4, cols // 4
    return {
        "one tensor": {"name": one[0], "index": None, "nbytes": one[4] - one[3]},
        "quarter of rows": {"name": big[0], "index": [[r, r + rows // 4]],
                            "nbytes": (big[4] - big[3]) * (rows // 4) // rows},
        "quarter of columns": {"name": big[0], "index": [[0, rows], [c, c + cols // 4]],
                               "nbytes": (big[4] - big[3]) * (cols // 4) // cols},
        "every tensor": {"name": None, "index": None, "nbytes": size},
    }


def _io() -> dict:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines() if line)}


def _run(spec: dict) -> dict:
    """In this (fresh) process: one caller, one way."""
    from safeload.bench import cache
    from safeload.bench.loaders import touch

    way, task, path = spec["way"], spec["task"], spec["path"]
    if way == "safeload":
        from safeload import safe_open
        kwargs = {}
    else:
        from safetensors import safe_open
        kwargs = {"backend": spec["backend"]} if spec.get("backend") else {}
    if spec["condition"] == "cold":
        cache.evict(path)
    time.sleep(spec.get("settle") or 0)
    result = {"resident_before": cache.resident_fraction(path)}
    name, index = spec["name"], spec["index"]
    before = _io()
    t0 = time.perf_counter()
    with safe_open(path, framework="pt", device="cpu", **kwargs) as f:
        if name is None:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        elif index is None:
            tensors = {name: f.get_tensor(name)}
        else:
            tensors = {name: f.get_slice(name)[tuple(slice(a, b) for a, b in index)]}
        checksum = touch(tensors)
        report = f.report() if hasattr(f, "report") and way == "safeload" else None
    seconds = time.perf_counter() - t0
    after = _io()
    result.update(seconds=seconds, checksum=f"{checksum:016x}",
                  nbytes=sum(t.numel() * t.element_size() for t in tensors.values()),
                  storage_bytes=after["read_bytes"] - before["read_bytes"],
                  rchar=after["rchar"] - before["rchar"])
    if report is not None:
        result["report"] = {k: report[k] for k in ("reads", "read_ahead", "bytes_read") if k in report}
    return result


def _expected_checksums(path: str, chosen: dict) -> dict:
    """Each caller's checksum from the writer's bytes, through torch indexing of the file's
    mapping (not through any loader measured here)."""
    import numpy as np
    import torch

    import safeload
    from safeload.bench.loaders import file_checksum, touch

    header = safeload.read_header(path)
    by_name = {t[0]: t for t in header["tensors"]}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for task, c in chosen.items():
        if c["name"] is None:
            out[task] = file_checksum([path])
            continue
        name, dtype, shape, b, e = by_name[c["name"]]
        width = (e - b) // max(1, shape[0] * shape[1])
        raw = torch.from_numpy(np.array(data[header["data_start"] + b:header["data_start"] + e]))
        t = raw.view(shape[0], shape[1] * width)
        if c["index"]:
            index = [slice(a, z) for a, z in c["index"]]
            if len(index) == 2:
                index[1] = slice(index[1].start * width, index[1].stop * width)
            t = t[tuple(index)]
        out[task] = touch({name: t})
    return out


def run(path: str, *, conditions, rounds: int, settle: float, timeout: float, interpreters: dict,
        on_run=None) -> dict:
    from safeload.bench import cache, report, runner
    from safeload.bench.loaders import _st_pread_unavailable

    chosen = targets(path)
    expected = _expected_checksums(path, chosen)
    ways, skipped = [], {}
    for key, label, env, backend in WAYS:
        python = interpreters.get(env) if env else None
        if env and not python:
            skipped[key] = f"pass --python {env}=PYTHON (an interpreter with safetensors 0.9 and torch)"
        elif backend and env is None and _st_pread_unavailable("cpu"):
            skipped[key] = _st_pread_unavailable("cpu")
        else:
            ways.append((key, label, python, backend))
    runs: dict = {(c, t, k): [] for c in conditions for t in TASKS for k, *_ in ways}
    total, done = len(runs) * rounds, 0
    for condition in conditions:
        for _ in range(rounds):
            for task in TASKS:
                for key, label, python, backend in ways:
                    if on_run:
                        on_run(done, total, f"{condition} {task} {label}")
                    if condition == "warm" and (cache.resident_fraction(path) or 0.0) < 1.0:
                        cache.warm(path)
                    spec = {"way": key, "task": task, "path": path, "condition": condition, "settle": settle,
                            "backend": backend, **{k: chosen[task][k] for k in ("name", "index")}}
                    r = runner.run_child(["-m", "safeload.bench.partial", "--_run", json.dumps(spec)],
                                         timeout, python, what="run")
                    if "checksum" in r and int(r["checksum"], 16) != expected[task]:
                        r = {"error": "WRONG BYTES: checksum differs from the file's"}
                    runs[(condition, task, key)].append(r)
                    done += 1
    if on_run:
        on_run(done, total, "done")
    rows = []
    for (condition, task, key), rs in runs.items():
        label = next(w[1] for w in ways if w[0] == key)
        ok = [r for r in rs if "error" not in r]
        row = {"condition": condition, "task": task, "key": key, "label": label,
               "asked_bytes": chosen[task]["nbytes"]}
        if len(ok) < len(rs):
            row["error"] = next(r["error"] for r in rs if "error" in r)
        if ok:
            secs = [r["seconds"] for r in ok]
            row.update(runs=len(ok), seconds_median=statistics.median(secs), seconds_min=min(secs),
                       seconds_max=max(secs),
                       storage_bytes_median=int(statistics.median(r["storage_bytes"] for r in ok)),
                       resident_before=[r["resident_before"] for r in ok])
            reports = [r["report"] for r in ok if "report" in r]
            if reports:
                row["report"] = reports[-1]
        rows.append(row)
    return {"schema": "safeload-bench-safe-open/1", "path": report.shown_path(path), "file_bytes": os.path.getsize(path),
            "rounds": rounds, "settle": settle, "targets": chosen, "skipped": skipped,
            "machine": runner.machine(), "packages": runner.package_versions(), "rows": rows}


def table(doc: dict) -> str:
    t = doc["targets"]
    lines = [f"safe_open callers on {os.path.basename(doc['path'])} ({doc['file_bytes'] / (1 << 20):,.0f} MiB), "
             f"{doc['rounds']} rounds, median [min-max]",
             f"  one tensor: {t['one tensor']['name']}; slices of {t['quarter of rows']['name']}"]
    for condition in dict.fromkeys(r["condition"] for r in doc["rows"]):
        lines.append("")
        lines.append(f"{condition:5} {'caller':18} {'way':34} {'seconds':>24} {'read from storage':>18} {'of asked':>9}")
        for r in (x for x in doc["rows"] if x["condition"] == condition):
            if "seconds_median" not in r:
                lines.append(f"{'':5} {r['task']:18} {r['label']:34} {r.get('error', '')}")
                continue
            secs = f"{r['seconds_median']:.4f} [{r['seconds_min']:.4f}-{r['seconds_max']:.4f}]"
            sb = r["storage_bytes_median"]
            note = f"  reads {r['report']['reads']}, read-ahead {r['report']['read_ahead']}" if "report" in r else ""
            lines.append(f"{'':5} {r['task']:18} {r['label']:34} {secs:>24} {sb / (1 << 20):>14,.1f} MiB "
                         f"{sb / r['asked_bytes']:>8.0%}{note}")
    for key, why in doc["skipped"].items():
        lines.append(f"{key}: not run: {why}")
    return "\n".join(lines)


def main(path: str, *, conditions, rounds: int, settle: float, timeout: float, interpreters: dict,
         json_out, on_run=None) -> int:
    doc = run(path, conditions=conditions, rounds=rounds, settle=settle, timeout=timeout,
              interpreters=interpreters, on_run=on_run)
    print(table(doc))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"\nJSON: {json_out}")
    bad = [r for r in doc["rows"] if r["key"] == "safeload" and "error" in r]
    return 1 if bad or any("WRONG" in r.get("error", "") for r in doc["rows"]) else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_run":
        try:
            out = _run(json.loads(sys.argv[2]))
        except Exception as e:  # reported as this run's error
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.flush()
        os.write(1, ("\n" + json.dumps(out) + "\n").encode())
        sys.exit(0)
    sys.exit("usage: safeload bench --safe-open [FILE]")
