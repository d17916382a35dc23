"""Turn pytest-benchmark JSON files into Markdown tables of ratios against the reference.

    python benchmarks/report.py bench.json                 # one run: full tables
    python benchmarks/report.py run1.json run2.json ...    # several runs: tables of the first,
                                                           # then each ratio's range over all

For each group (op, shape, dtype, device) prints every backend's median and minimum time, its
spread (IQR) and its speed-up over the eager reference measured in the same run (or over the
benchmark a group flags as its ``baseline``, such as the official AutoAttack), as the ratio
of medians and of minimums (the minimum is the steadier figure on a shared, noisy machine);
throughput (at the median) where the benchmark recorded the bytes it moves (GB/s) or the images
it processes (img/s).
"""
import json
import sys
from collections import defaultdict


def _throughput(info: dict, seconds: float) -> str:
    if "bytes_moved" in info:
        return f"{info['bytes_moved'] / seconds / 1e9:.1f} GB/s"
    if "images_per_step" in info:
        return f"{info['images_per_step'] / seconds:.0f} img/s"
    return "-"


def _baseline(rows: dict):
    """The group's baseline: the benchmark flagged ``baseline`` in extra_info, else the
    reference backend."""
    flagged = [b for b in rows.values() if b["extra_info"].get("baseline")]
    return flagged[0] if flagged else rows.get("reference")


def _load(path: str):
    """(run data, {group: {backend: benchmark}})."""
    with open(path) as handle:
        data = json.load(handle)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["extra_info"]["backend"]] = bench
    return data, groups


def tables(path: str) -> str:
    data, groups = _load(path)
    machine = data.get("machine_info", {})
    lines = [f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
             f"python {machine.get('python_version', '?')}, run {data.get('datetime', '?')}", ""]
    for group in sorted(groups):
        rows = groups[group]
        reference = _baseline(rows)
        lines += [f"### {group}", "",
                  "| backend | median ms | min ms | IQR ms | vs reference (median) | "
                  "vs reference (min) | throughput |",
                  "|---|---|---|---|---|---|---|"]
        for backend, bench in sorted(rows.items(), key=lambda kv: kv[1]["stats"]["median"]):
            stats = bench["stats"]
            ratios = [f"{reference['stats'][key] / stats[key]:.2f}x" if reference else "-"
                      for key in ("median", "min")]
            lines.append(f"| {backend} | {stats['median'] * 1e3:.3f} | {stats['min'] * 1e3:.3f} "
                         f"| {stats['iqr'] * 1e3:.3f} | {ratios[0]} | {ratios[1]} "
                         f"| {_throughput(bench['extra_info'], stats['median'])} |")
        lines.append("")
    return "\n".join(lines)


def spread(paths) -> str:
    """Each backend's speed-up over the reference (ratio of medians) in every run: lowest,
    median and highest over the runs."""
    ratios = defaultdict(list)
    for path in paths:
        _, groups = _load(path)
        for group, rows in groups.items():
            reference = _baseline(rows)
            for backend, bench in rows.items():
                if reference and bench is not reference:
                    ratios[group, backend].append(
                        reference["stats"]["median"] / bench["stats"]["median"])
    lines = [f"### Speed-up over the reference across {len(paths)} runs (ratio of medians)", "",
             "| group | backend | lowest | median | highest |", "|---|---|---|---|---|"]
    for (group, backend), values in sorted(ratios.items()):
        values.sort()
        lines.append(f"| {group} | {backend} | {values[0]:.2f}x | "
                     f"{values[len(values) // 2]:.2f}x | {values[-1]:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables(sys.argv[1]))
    if len(sys.argv) > 2:
        print(spread(sys.argv[1:]))
