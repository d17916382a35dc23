"""Turn a pytest-benchmark JSON file into Markdown tables of ratios against the reference.

    python benchmarks/report.py bench.json

For each group (op, shape, dtype, device) prints every backend's median time, its spread
(IQR) and its speed-up over the eager reference measured in the same run; throughput where
the benchmark recorded the bytes it moves (GB/s) or the images it processes (img/s).
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


def tables(path: str) -> str:
    with open(path) as handle:
        data = json.load(handle)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["extra_info"]["backend"]] = bench
    machine = data.get("machine_info", {})
    lines = [f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
             f"python {machine.get('python_version', '?')}, run {data.get('datetime', '?')}", ""]
    for group in sorted(groups):
        rows = groups[group]
        reference = rows.get("reference")
        lines += [f"### {group}", "", "| backend | median ms | IQR ms | vs reference | throughput |",
                  "|---|---|---|---|---|"]
        for backend, bench in sorted(rows.items(), key=lambda kv: kv[1]["stats"]["median"]):
            stats = bench["stats"]
            ratio = f"{reference['stats']['median'] / stats['median']:.2f}x" if reference else "-"
            lines.append(f"| {backend} | {stats['median'] * 1e3:.3f} | {stats['iqr'] * 1e3:.3f} "
                         f"| {ratio} | {_throughput(bench['extra_info'], stats['median'])} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables(sys.argv[1]))
