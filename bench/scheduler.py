#!/usr/bin/env python3
"""Throughput and latency of `berth up`, measured with the real binaries.

    sudo python3 bench/scheduler.py [--array N] [--separate N] [--latency N] [--slots N]

Builds berth in release mode, starts `berth up` with 16 slots in a fresh SWD, and, with
jobs that run `true` as nobody (every job's state durable and its log file written):
  - an array of N jobs submitted at once, until all are Done: jobs/s;
  - N jobs submitted by one `berth run` process each, until all are Done: jobs/s;
  - submit -> start and submit -> Done of one job, median of N, back to back and with a
    0.5 s pause before each.
It prints figures and asserts nothing.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--array", type=int, default=10000)
    ap.add_argument("--separate", type=int, default=1000)
    ap.add_argument("--latency", type=int, default=50)
    ap.add_argument("--slots", type=int, default=16)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scheduler.py: run as root (jobs run as nobody)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "berth"], cwd=REPO, check=True)
    berth = os.path.join(REPO, "target/release/berth")
    root = tempfile.mkdtemp(prefix="berth-sched-")
    os.chmod(root, 0o755)
    swd, work = os.path.join(root, "swd"), os.path.join(root, "work")
    os.makedirs(work)
    os.chown(work, 65534, 65534)
    env = dict(os.environ, BERTH_SWD=swd)
    up = subprocess.Popen([berth, "up", "--swd", swd, "--slots", str(a.slots)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        sock = os.path.join(swd, "berth.sock")
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        time.sleep(0.2)

        def nobody(args, **kw):
            return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", berth] + args,
                                  cwd=work, env=env, capture_output=True, text=True, **kw)

        def info(job):
            return json.loads(subprocess.run([berth, "info", "--json", str(job)], env=env,
                                             capture_output=True, text=True, check=True).stdout)

        # array
        t = time.perf_counter()
        out = nobody(["run", "--array", str(a.array), "--", "true"]).stdout.split()[0]
        first, last = (int(x) for x in out.split("-"))
        subprocess.run([berth, "wait", str(last)], env=env, capture_output=True)
        while subprocess.run([berth, "list", "--state", "Queued,Running", "--limit", "1", "--json"], env=env,
                             capture_output=True, text=True).stdout.strip() not in ("[]", ""):
            time.sleep(0.05)
        dt = time.perf_counter() - t
        print(f"array of {a.array} `true` jobs: {a.array / dt:8.0f} jobs/s ({dt:.2f} s, submit to all Done)")

        # separate submissions, 8 submitters at a time
        t = time.perf_counter()
        procs, ids = [], []
        for i in range(a.separate):
            procs.append(subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", berth, "run", "--", "true"],
                                          cwd=work, env=env, stdout=subprocess.PIPE, text=True))
            if len(procs) >= 8:
                ids.append(int(procs.pop(0).communicate()[0]))
        ids += [int(p.communicate()[0]) for p in procs]
        subprocess.run([berth, "wait"] + [str(max(ids))], env=env, capture_output=True)
        while subprocess.run([berth, "list", "--state", "Queued,Running", "--limit", "1", "--json"], env=env,
                             capture_output=True, text=True).stdout.strip() not in ("[]", ""):
            time.sleep(0.05)
        dt = time.perf_counter() - t
        print(f"{a.separate} separate `berth run` processes: {a.separate / dt:8.0f} jobs/s ({dt:.2f} s)")

        for pause in (0.0, 0.5):
            starts, dones = [], []
            for _ in range(a.latency):
                time.sleep(pause)
                r = nobody(["run", "-w", "--json", "--", "true"])
                v = json.loads(r.stdout)[0]
                starts.append(v["started_ms"] - v["submitted_ms"])
                dones.append(v["ended_ms"] - v["submitted_ms"])
            print(f"one job, pause {pause} s: submit->start median {statistics.median(starts):.1f} ms, "
                  f"submit->Done median {statistics.median(dones):.1f} ms (n={a.latency}, server clock, ms resolution)")
        rss = [l for l in open(f"/proc/{up.pid}/status") if l.startswith("VmRSS")]
        print(f"server resident memory after the runs: {rss[0].split()[1]} kB")
    finally:
        up.terminate()
        up.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
