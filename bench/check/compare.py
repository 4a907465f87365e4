#!/usr/bin/env python3
"""Check mode against fast mode and valgrind memcheck on real programs.

Runs each program plainly, on heapkeep (LD_PRELOAD), in heapkeep's check
mode and under `valgrind --tool=memcheck --trace-children=yes`, ROUNDS times
each in alternation, and prints a Markdown table of median wall times and
their ratios. Needs `cargo build --release` first (the preload library) and
valgrind, sqlite3, perl, python3, gcc on PATH.

    python3 bench/check/compare.py [ROUNDS]
"""
import os
import subprocess
import sys
import time

from alternate import medians

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "target/release/libheapkeep_preload.so")
SQL = b"""create table t(a, b);
with recursive c(x) as (select 1 union all select x + 1 from c where x < 100000)
insert into t select x, hex(randomblob(16)) from c;
create index i on t(b);
select count(*), sum(length(b)) from t;
"""
PYTHON = subprocess.run(
    ["python3", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
).stdout.strip()
PROGRAMS = [
    ("sqlite3", ["sqlite3", ":memory:"], SQL),
    (
        "perl",
        ["perl", "-e", 'my %h; $h{$_} = "x" x ($_ % 100) for 1..200000; '
         'my @a = sort keys %h; print scalar(@a), "\\n"'],
        b"",
    ),
    ("python3", [PYTHON, os.path.join(ROOT, "examples/alloc_heavy.py")], b""),
    ("gcc", ["gcc", "-O2", "-c", "-o", "/tmp/hk-check-api.o",
             os.path.join(ROOT, "tests/c/api.c")], b""),
]
MODES = {
    "plain": ([], {}),
    "fast": ([], {"LD_PRELOAD": LIB}),
    "check": ([], {"LD_PRELOAD": LIB, "HEAPKEEP_CHECK": "1"}),
    "valgrind": (["valgrind", "-q", "--trace-children=yes", "--leak-check=full"], {}),
}


def timed(prefix, env, argv, stdin):
    e = dict(os.environ)
    e.update(env)
    start = time.perf_counter()
    subprocess.run(prefix + argv, input=stdin, env=e,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print("| program | plain (s) | heapkeep (s) | check (s) | valgrind (s) "
          "| check/heapkeep | valgrind/heapkeep | valgrind/check |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, argv, stdin in PROGRAMS:
        t = medians(MODES, rounds, lambda m: timed(*MODES[m], argv, stdin))
        print(f"| {name} | {t['plain']:.3f} | {t['fast']:.3f} | {t['check']:.3f} "
              f"| {t['valgrind']:.3f} | {t['check'] / t['fast']:.1f} "
              f"| {t['valgrind'] / t['fast']:.1f} | {t['valgrind'] / t['check']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
