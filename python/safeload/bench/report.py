"""The results as a terminal table, a JSON file and a bar chart."""
from __future__ import annotations

import json
import os

_GIB = 1 << 30


def _gib(n: int | None) -> str:
    if n is None:
        return "-"
    if abs(n) < _GIB // 4:
        return f"{n / (1 << 20):.0f} MiB"
    return f"{n / _GIB:.2f} GiB"


def shown_path(path: str) -> str:
    """A path as results files record it: relative to the working directory when inside it,
    from ``~`` when in the home directory, so a results file names no one's machine layout."""
    full = os.path.abspath(path)
    for base, shown in ((os.getcwd(), ""), (os.path.expanduser("~"), "~")):
        if full == base or full.startswith(base.rstrip(os.sep) + os.sep):
            rest = os.path.relpath(full, base)
            return os.path.join(shown, rest) if shown else rest
    return full


def describe_machine(doc: dict) -> str:
    m, s = doc["machine"], doc.get("storage", {})
    mem = f", {m['memory_bytes'] / _GIB:.1f} GiB RAM" if m.get("memory_bytes") else ""
    line = f"{m['cpu']}, {m['cores']} cores{mem}, {m['system']}"
    if m.get("gpu"):
        line += f", {m['gpu']}"
    if s:
        kind = {True: "rotational", False: "non-rotational"}.get(s.get("rotational"), "")
        dev = s.get("block_device", s.get("source", "?"))
        line += f"; files on {s.get('filesystem', '?')} ({dev}{', ' + kind if kind else ''})"
    return line


def table(doc: dict) -> str:
    files = doc["files"]
    what = files[0]["path"] if len(files) == 1 else f"{len(files)} files"
    out = [
        f"safeload bench: {what}, {_gib(doc['total_bytes'])} ({doc['total_bytes']:,} bytes), "
        f"{doc['rounds']} interleaved rounds, median (min-max)",
        f"machine: {describe_machine(doc)}",
        "time: loader call until every tensor is on the device and every byte was read once",
    ]
    other = doc.get("other_load_cores")
    if other is not None and other > 0.25:
        out.append(f"WARNING: other processes kept {other:.1f} of {doc['machine'].get('cores')} cores "
                   "busy on average during the run; these numbers include that competition")
    header = (f"{'':38} {'GB/s':>6} {'(min-max)':>13} {'median s':>9} {'vs limit':>9} "
              f"{'vs fast':>8} {'peak RSS':>10} {'RSS added':>10}")
    for block in doc["results"]:
        limit = block["limit_gbps"]
        how = "evicted before each run" if block["condition"] == "cold" else "resident"
        state = block.get("state_label", "a fresh process")
        out += ["", f"device {block['device']}, {block['condition']} (page cache {how}), {state}; "
                f"limit {'-' if limit is None else f'{limit:.2f} GB/s'}", header]
        for row in block["rows"]:
            name = row["label"]
            if "gbps_median" not in row:
                out.append(f"{name:38} {row['status']}")
                continue
            rng = f"({row['gbps_min']:.2f}-{row['gbps_max']:.2f})"
            vs_limit = f"{row['ratio_to_limit']:.2f}x" if "ratio_to_limit" in row else "-"
            vs_fast = f"{row['ratio_to_safeload_fast']:.2f}x" if "ratio_to_safeload_fast" in row else "-"
            if row["kind"] != "loader":
                vs_fast = ""
            out.append(
                f"{name:38} {row['gbps_median']:6.2f} {rng:>13} {row['seconds_median']:9.3f} "
                f"{vs_limit:>9} {vs_fast:>8} {_gib(row['rss_peak_bytes']):>10} "
                f"{_gib(row['rss_added_bytes']):>10}"
            )
            if row["status"] != "ok":
                out.append(f"{'':38} {row['status']}")
            for field in ("configs_gbps_median", "methods_gbps_median"):
                if len(row.get(field, {})) > 1:
                    ways = ", ".join(f"{w} {g:.2f}" for w, g in row[field].items())
                    out.append(f"{'':40}each way, median GB/s: {ways}")
    return "\n".join(out)


def write_json(doc: dict, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def plot_unavailable() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    return None


def plot(doc: dict, path: str | os.PathLike) -> None:
    """One panel per (device, condition): a bar per loader (median GB/s, whiskers min to max),
    the limits as horizontal lines, and loaders that could not run named on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = doc["results"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(5.2 * len(blocks), 4.6), squeeze=False)
    limit_styles = {"storage": ("tab:red", "--"), "memory": ("tab:purple", "-."), "h2d": ("tab:green", ":")}
    for ax, block in zip(axes[0], blocks):
        loaders = [r for r in block["rows"] if r["kind"] == "loader"]
        names, values, lo, hi, colors = [], [], [], [], []
        for r in loaders:
            names.append(r["label"].replace(" load_file", "").replace(" ", "\n", 1))
            if "gbps_median" in r:
                values.append(r["gbps_median"])
                lo.append(r["gbps_median"] - r["gbps_min"])
                hi.append(r["gbps_max"] - r["gbps_median"])
                colors.append("tab:blue" if r["key"].startswith("safeload") else "tab:gray")
            else:
                values.append(0.0)
                lo.append(0.0)
                hi.append(0.0)
                colors.append("white")
        x = range(len(names))
        ax.bar(x, values, yerr=[lo, hi], color=colors, edgecolor="black", linewidth=0.5, capsize=3)
        top = max([v + h for v, h in zip(values, hi)] + [1e-9])
        for r in block["rows"]:
            if r["kind"] != "loader" and "gbps_median" in r:
                color, style = limit_styles.get(r["kind"], ("black", "--"))
                ax.axhline(r["gbps_median"], color=color, linestyle=style,
                           label=f"{r['label'].split(':')[0]}: {r['gbps_median']:.2f} GB/s")
                top = max(top, r["gbps_median"])
        for i, r in enumerate(loaders):
            if "gbps_median" not in r:
                why = "not\ninstalled" if r["status"].startswith("not installed") else "n/a"
                if r["status"].startswith(("failed", "WRONG")):
                    why = "failed"
                ax.text(i, top * 0.02, why, ha="center", va="bottom", fontsize=7, rotation=90)
            else:
                ax.text(i, r["gbps_median"], f"{r['gbps_median']:.2f}", ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, fontsize=7, rotation=45, ha="right")
        ax.set_ylim(0, top * 1.15)
        ax.set_ylabel("GB/s (median; whiskers min-max)")
        state = "" if block.get("state", "resident") == "resident" else f", {block['state']} process"
        ax.set_title(f"{block['device']}, {block['condition']} page cache{state}", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    size = _gib(doc["total_bytes"])
    title = f"safeload bench: {size}, {doc['rounds']} rounds\n{describe_machine(doc)}"
    other = doc.get("other_load_cores")
    if other is not None and other > 0.25:
        title += f"\nother processes kept {other:.1f} cores busy during the run"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
