#!/usr/bin/env python3
"""A/B of benchmark worker binaries, alternating runs (the order flips
every round), printing each one's minimum and median time and their ratio
to the first.

    python3 bench/ab.py ROUNDS WORKLOAD WORKER[+profile]...

WORKER is a worker binary (e.g. a copy of target/release/hk-worker-heapkeep
kept from another commit); `+profile` runs it with the heap profile on
(HEAPKEEP_PROFILE=1, output to /dev/null). Runs at the quick scale.
"""
import json, os, statistics, subprocess, sys

rounds = int(sys.argv[1])
workload = sys.argv[2]
workers = sys.argv[3:]


def run(spec):
    path, _, mode = spec.partition("+")
    env = dict(os.environ)
    if mode == "profile":
        env.update(HEAPKEEP_PROFILE="1", HEAPKEEP_PROFILE_OUT="/dev/null")
    out = subprocess.run([path, workload, "quick"], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])["seconds"]


times = {w: [] for w in workers}
for r in range(rounds):
    for w in workers if r % 2 == 0 else workers[::-1]:
        times[w].append(run(w))
base = workers[0]
for w in workers:
    lo, med = min(times[w]), statistics.median(times[w])
    print(f"{w:40} min {lo:.4f} ({lo / min(times[base]):.3f})  "
          f"med {med:.4f} ({med / statistics.median(times[base]):.3f})")
