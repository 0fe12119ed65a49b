"""CPU time of `lakeloop --help` against the floor of starting Python at all (`python -c pass`).

    .venv/bin/python bench/cli.py [--rounds 15]

Each command runs as a subprocess, alternating with the baseline, and its CPU time (user +
system, of the child and its children) is read from ``resource.getrusage(RUSAGE_CHILDREN)``
deltas, so other load on the machine costs wall time but not these figures. Also measured:
`import lakeloop` and `import typer` (what the CLI cannot avoid), and a subcommand's help
(`lakeloop lake --help`, which loads that subcommand and rich). Prints medians, the ratio to the
baseline, and a JSON line. The target (issue 12): `lakeloop --help` under 0.15 s CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
TARGET_S = 0.15


def cpu_seconds(cmd: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    python = sys.executable
    cases = {
        "python -c pass (baseline)": [python, "-c", "pass"],
        "lakeloop --help": [str(BIN / "lakeloop"), "--help"],
        "import lakeloop": [python, "-c", "import lakeloop"],
        "import typer": [python, "-c", "import typer"],
        "lakeloop lake --help": [str(BIN / "lakeloop"), "lake", "--help"],
    }
    for cmd in cases.values():  # warm the page cache and .pyc files; not counted
        cpu_seconds(cmd)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # alternating rounds: each command sees the same machine
        for name, cmd in cases.items():
            samples[name].append(cpu_seconds(cmd))
    base = statistics.median(samples["python -c pass (baseline)"])
    result = {"rounds": args.rounds, "load_avg_1m": round(os.getloadavg()[0], 2), "target_s": TARGET_S, "cases": {}}
    print(f"{'command':<28} {'median CPU s':>12} {'min':>7} {'x baseline':>10}")
    for name, values in samples.items():
        med = statistics.median(values)
        result["cases"][name] = {"median_cpu_s": round(med, 4), "min_cpu_s": round(min(values), 4),
                                 "ratio_to_baseline": round(med / base, 2)}
        print(f"{name:<28} {med:>12.3f} {min(values):>7.3f} {med / base:>9.1f}x")
    helped = result["cases"]["lakeloop --help"]["median_cpu_s"]
    print(f"lakeloop --help: {helped:.3f} s CPU (target < {TARGET_S} s): {'met' if helped < TARGET_S else 'NOT met'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
