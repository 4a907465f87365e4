#!/usr/bin/env python3
"""The sampled guard's cost: the heapkeep harness worker with the guard off
(HEAPKEEP_GUARD_SAMPLE=0) and at a sample period, alternating, ROUNDS runs
each; prints median times and their ratio per workload and the geomean.
Needs `cargo build --release -p heapkeep-bench` first.

    python3 bench/check/guard_ab.py [PERIOD] [ROUNDS] [WORKLOAD...]
"""
import json
import math
import os
import subprocess
import sys

from alternate import medians

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "target/release/hk-worker-heapkeep")


def run(workload, period):
    env = dict(os.environ, HEAPKEEP_GUARD_SAMPLE=str(period))
    out = subprocess.run([WORKER, workload, "quick"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])["seconds"]


def main():
    period = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    workloads = sys.argv[3:] or ["small", "larson", "prodcons", "random", "realloc", "churn"]
    print(f"| workload | guard off (s) | guard 1/{period} (s) | on/off |")
    print("|---|---:|---:|---:|")
    ratios = []
    for w in workloads:
        t = medians([0, period], rounds, lambda p: run(w, p))
        off, on = t[0], t[period]
        ratios.append(on / off)
        print(f"| {w} | {off:.3f} | {on:.3f} | {on / off:.3f} |", flush=True)
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"| **geomean** | | | **{geo:.3f}** |")


if __name__ == "__main__":
    main()
