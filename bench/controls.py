#!/usr/bin/env python3
"""What the job controls of issue 9 cost, measured (prints figures, asserts nothing).

    sudo python3 bench/controls.py [--array 10000] [--chain 1000] [--list 100000] [--old BERTH]

- the array of 10,000 `true` with every job under `--time 1h`, against the same array
  without, interleaved in one run (the server keeps a deadline per running job);
- a chain of 1,000 jobs, each submitted with `--after` the one before, against the same
  1,000 jobs without dependencies, both submitted one `berth run` at a time;
- `berth list` of 100,000 jobs (held, so that nothing runs) with the table sized to its
  content, and with `-o id,state`; with `--old BERTH`, the same listing by that binary
  (the CLI before the table) against the same server.

Its SWDs go to a temporary directory under --dir, removed at the end; like
bench/scheduler.py it first waits for recent deletions on ext4 to age.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scheduler as S  # noqa: E402


def chain(b, n, after):
    """Submits n jobs one `berth run` at a time, each --after the one before when
    `after`; jobs per second from the first submission to the last end."""
    t = time.perf_counter()
    prev = None
    last = None
    for _ in range(n):
        args = ["run"]
        if after and prev is not None:
            args += ["--after", str(prev)]
        out = b.nobody(args + ["--", "true"])
        if out.returncode != 0:
            sys.exit(f"controls.py: berth run failed: {out.stderr}")
        prev = last = int(out.stdout.split()[0])
    b.all_done(last)
    return n / (time.perf_counter() - t)


def timed(cmd, env, runs=3):
    """Median wall time of a command, its output thrown away (seconds)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--array", type=int, default=10000)
    ap.add_argument("--chain", type=int, default=1000)
    ap.add_argument("--list", type=int, default=100000)
    ap.add_argument("--old", help="an older berth binary, to list with it too")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--no-wait", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("controls.py: run as root (jobs run as nobody)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "berth"], cwd=S.REPO, check=True)
    berth = os.path.join(S.REPO, "target/release/berth")
    S.wait_for_deletions_to_age(a.no_wait)
    root = tempfile.mkdtemp(prefix="berth-controls-", dir=a.dir)
    os.chmod(root, 0o755)
    print(f"in {root}, {a.slots} slots, jobs `true` as nobody")
    try:
        # Time limits: the array with and without, interleaved.
        figures = {"none": [], "--time 1h": []}
        for i in range(2):
            for what in figures:
                b = S.Berth(berth, os.path.join(root, f"t{i}{len(figures[what])}{what[:2]}"),
                            a.slots, [])
                try:
                    extra = [] if what == "none" else ["--time", "1h"]
                    t = time.perf_counter()
                    out = b.nobody(["run", "--array", str(a.array)] + extra + ["--", "true"])
                    last = int(out.stdout.split()[0].split("-")[1])
                    b.all_done(last)
                    figures[what].append(a.array / (time.perf_counter() - t))
                finally:
                    b.stop()
        base, lim = figures["none"], figures["--time 1h"]
        print(f"array of {a.array}: {', '.join(f'{r:.0f}' for r in base)} jobs/s without a time "
              f"limit; {', '.join(f'{r:.0f}' for r in lim)} with --time 1h "
              f"(the limit costs {100 * (1 - statistics.mean(lim) / statistics.mean(base)):.1f} %)")

        # Dependencies: a chain against the same jobs without.
        b = S.Berth(berth, os.path.join(root, "chain"), a.slots, [])
        try:
            free = chain(b, a.chain, False)
            chained = chain(b, a.chain, True)
            free2 = chain(b, a.chain, False)
            chained2 = chain(b, a.chain, True)
        finally:
            b.stop()
        print(f"{a.chain} jobs submitted one at a time: {free:.0f}, {free2:.0f} jobs/s "
              f"independent; {chained:.0f}, {chained2:.0f} jobs/s as a chain, each --after "
              f"the one before")

        # Listing 100,000 jobs.
        b = S.Berth(berth, os.path.join(root, "list"), a.slots,
                    ["--max-jobs-per-submission", str(a.list)])
        try:
            out = b.nobody(["run", "--hold", "--array", str(a.list), "--", "true"])
            if out.returncode != 0:
                sys.exit(f"controls.py: {out.stderr}")
            n = str(a.list)
            table = timed([berth, "list", "--limit", n], b.env)
            bare = timed([berth, "list", "--limit", n, "-o", "id,state"], b.env)
            js = timed([berth, "list", "--limit", n, "--json"], b.env)
            print(f"berth list of {a.list} jobs: {table:.2f} s as a table, {bare:.2f} s with "
                  f"-o id,state, {js:.2f} s as --json (median of 3)")
            if a.old:
                old = timed([a.old, "list", "--limit", n], b.env)
                print(f"the same listing by {a.old} (fixed-width columns): {old:.2f} s")
        finally:
            b.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with open(S.STAMP, "w"):
            pass


if __name__ == "__main__":
    main()
