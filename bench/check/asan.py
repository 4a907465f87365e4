#!/usr/bin/env python3
"""Check mode against AddressSanitizer on the same allocation churn.

Builds bench/check/churn.c twice with gcc (plain, and with
-fsanitize=address, whose allocator records a stack at every malloc and
free as check mode does) and runs, ROUNDS times each in alternation: glibc,
heapkeep (LD_PRELOAD), heapkeep's check mode, and ASan. Prints a Markdown
table of median nanoseconds per malloc/free pair and ratios to heapkeep's
fast mode. Needs `cargo build --release` first (the preload library), gcc
and libasan (Debian: gcc, libasan8).

    python3 bench/check/asan.py [ROUNDS]
"""
import os
import subprocess
import sys
import tempfile

from alternate import medians

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "target/release/libheapkeep_preload.so")
SRC = os.path.join(ROOT, "bench/check/churn.c")
# (threads, pairs per thread): one thread, then four on the two cores.
CASES = [(1, 2_000_000), (4, 500_000)]


def build(out, extra):
    subprocess.run(["gcc", "-O2", "-g", "-pthread", *extra, "-o", out, SRC], check=True)


def run(exe, threads, pairs, env):
    e = dict(os.environ)
    e.update(env)
    out = subprocess.run([exe, str(threads), str(pairs)], env=e, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    tmp = tempfile.mkdtemp(prefix="hk-asan-")
    plain, asan = os.path.join(tmp, "churn"), os.path.join(tmp, "churn-asan")
    build(plain, [])
    build(asan, ["-fsanitize=address"])
    modes = {
        "glibc": (plain, {}),
        "heapkeep": (plain, {"LD_PRELOAD": LIB}),
        "check": (plain, {"LD_PRELOAD": LIB, "HEAPKEEP_CHECK": "1"}),
        "asan": (asan, {"ASAN_OPTIONS": "detect_leaks=1"}),
    }
    print("| threads | glibc (ns) | heapkeep (ns) | check (ns) | ASan (ns) "
          "| check/heapkeep | ASan/heapkeep | ASan/glibc | check/ASan |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for threads, pairs in CASES:
        t = medians(modes, rounds, lambda m: run(modes[m][0], threads, pairs, modes[m][1]))
        print(f"| {threads} | {t['glibc']:.1f} | {t['heapkeep']:.1f} | {t['check']:.1f} "
              f"| {t['asan']:.1f} | {t['check'] / t['heapkeep']:.1f} "
              f"| {t['asan'] / t['heapkeep']:.1f} | {t['asan'] / t['glibc']:.1f} "
              f"| {t['check'] / t['asan']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
