"""Where an AT step's CPU time goes inside oneDNN: one PGD-10 + HE step of a benchmark variant
(see at_step.py) run with oneDNN's verbose log, its primitive execution times
summed per primitive, implementation and propagation kind.

    python benchmarks/at_step_onednn.py preact-resnet18 32 default plain-at-he

Prints, per variant, the total oneDNN time of the step and the table behind it; the ratio of
two variants' totals is what the convolution library alone allows between them.
"""
import argparse
import collections
import subprocess
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
VARIANTS = ("plain-at-he", "default", "fp32", "compile")


def run_step_verbosely(model_name: str, batch: int, variant: str) -> None:
    """Two warm-up steps, then one step with oneDNN's verbose log on stdout."""
    sys.path.insert(0, str(BENCHMARKS))
    from at_step import step_fn

    from heat_fast.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, 10, he=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    step = step_fn(variant, model, x, y)[0]
    for _ in range(2):
        step()
    sys.stdout.flush()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        step()


def primitive_times(log: str) -> dict[tuple[str, str, str], tuple[float, int]]:
    """{(primitive, implementation, propagation): (milliseconds, calls)} of a verbose log."""
    totals: dict = collections.defaultdict(lambda: [0.0, 0])
    for line in log.splitlines():
        fields = line.split(",")
        if len(fields) < 8 or fields[:4] != ["onednn_verbose", "v1", "primitive", "exec"]:
            continue
        primitive, implementation = fields[5], fields[6].split(":")[0]
        propagation = fields[7] if primitive == "convolution" else ""
        entry = totals[(primitive, implementation, propagation)]
        entry[0] += float(fields[-1])
        entry[1] += 1
    return {key: (ms, calls) for key, (ms, calls) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="e.g. preact-resnet18 or small-cnn")
    parser.add_argument("batch", type=int)
    parser.add_argument("variants", nargs="+", choices=VARIANTS)
    parser.add_argument("--run-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_step_verbosely(args.model, args.batch, args.variants[0])
        return
    for variant in args.variants:
        log = subprocess.run([sys.executable, __file__, args.model, str(args.batch), variant,
                              "--run-one"], check=True, capture_output=True, text=True).stdout
        times = primitive_times(log)
        print(f"{variant}: oneDNN {sum(ms for ms, _ in times.values()):.0f} ms in one step")
        for (primitive, implementation, propagation), (ms, calls) in sorted(
                times.items(), key=lambda item: -item[1][0]):
            print(f"  {primitive:12s} {implementation:22s} {propagation:17s} "
                  f"{ms:8.1f} ms {calls:5d} calls")


if __name__ == "__main__":
    main()
