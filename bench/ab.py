#!/usr/bin/env python3
"""A/B of benchmark worker binaries, alternating runs (the order flips
every round), printing each one's minimum and median time and their ratio
to the first, and the median over rounds of each round's ratio to the
first with its 95% interval (the sign test's order statistics, as the
harness report gives them: from 6 rounds on).

    python3 bench/ab.py ROUNDS WORKLOAD WORKER[+profile]...

WORKER is a worker binary (e.g. a copy of target/release/hk-worker-heapkeep
kept from another commit); `+profile` runs it with the heap profile on
(HEAPKEEP_PROFILE=1, output to /dev/null). Runs at the quick scale.
"""
import json, math, os, statistics, subprocess, sys

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


def interval_rank(n):
    """Largest k with P(Binomial(n, 1/2) < k) <= 2.5% (None below 6)."""
    ln_p, below, k = n * math.log(0.5), 0.0, 0
    for i in range(n // 2):
        below += math.exp(ln_p)
        if below > 0.025:
            break
        k = i + 1
        ln_p += math.log(n - i) - math.log(i + 1)
    return k or None


base = workers[0]
k = interval_rank(rounds)
for w in workers:
    lo, med = min(times[w]), statistics.median(times[w])
    line = (f"{w:40} min {lo:.4f} ({lo / min(times[base]):.3f})  "
            f"med {med:.4f} ({med / statistics.median(times[base]):.3f})")
    if w != base:
        paired = sorted(t / b for t, b in zip(times[w], times[base]))
        line += f"  paired {statistics.median(paired):.3f}"
        if k:
            line += f" [{paired[k - 1]:.3f}, {paired[-k]:.3f}]"
    print(line)
