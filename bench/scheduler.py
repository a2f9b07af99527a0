#!/usr/bin/env python3
"""Throughput and latency of `berth up`, measured with the real binaries.

    sudo python3 bench/scheduler.py [--array N] [--separate N] [--latency N] [--slots N]
                                    [--dir DIR] [--no-wait] [--hq PATH | --no-hq]

Builds berth in release mode, starts `berth up --slots 16 -r CORES/16` in a fresh SWD
(16 jobs at a time: a job asks for CORES/1 unless it says otherwise, and this machine has
2 cores), and, with jobs that run `true` as nobody (every job's state durable and its log
file written):
  - an array of N jobs submitted at once, until all are Done: jobs/s;
  - the same array with the store's commits not fsynced (`--no-fsync`): what durability
    costs;
  - the same array with jobs started by the tasker itself (`--no-keeper`): what the
    keeper, which lets jobs outlive a tasker process, costs;
  - N jobs submitted by one `berth run` process each, 8 at a time, until all are Done;
  - submit -> start and submit -> Done of one job, median of N, back to back and with a
    0.5 s pause before each.
Then the same array on `berth server` with --remote taskers (default 4, of 4 slots each)
joined over the secure channel on loopback, in --remote-rounds pairs (default 3) of an
embedded array and a remote one back to back: the median of the pairs' ratios. Then HyperQueue's real `hq` binary (../shared/peers/hq, or --hq) in the same run, side by
side: one server and one worker of 16 cpus, the same array with --stdout/--stderr none, and
one-job latency by the client's clock (`hq submit --wait`).
It prints figures and asserts nothing. Every file it makes is under a temporary directory.

On ext4 without a journal (this machine's root filesystem), creating a file costs a scan
over every inode of its group deleted in the last minutes (`recently_deleted` in the
kernel's inode allocator): right after the previous run removed its 20,000 log files, the
array would measure that scan. So the runs go to a new directory, and a run within six
minutes of the previous one's cleanup waits until that has aged out (`--no-wait` skips
the wait and says so).
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = dict(user=65534, group=65534, extra_groups=[])
STAMP = "/var/tmp/berth-bench.cleaned"
AGE = 370  # the kernel's RECENTCY_MIN + RECENTCY_DIRTY, 60 + 300 s, and a margin


def wait_for_deletions_to_age(skip):
    try:
        ago = time.time() - os.path.getmtime(STAMP)
    except FileNotFoundError:
        return
    if ago >= AGE:
        return
    if skip:
        print(f"note: the previous run cleaned up {ago:.0f} s ago; on ext4 without a journal its "
              f"deleted inodes slow file creation for {AGE - ago:.0f} s more (--no-wait)")
        return
    print(f"waiting {AGE - ago:.0f} s for the previous run's deleted inodes to age out "
          f"(see the top of this script; --no-wait skips)", flush=True)
    time.sleep(AGE - ago)


class HyperQueue:
    """HyperQueue's real binary: a server and a worker of `cpus` cpus, all under `root`."""

    def __init__(self, hq, root, cpus):
        self.hq = hq
        self.root = root
        self.sdir = os.path.join(root, "server")
        self.work = os.path.join(root, "work")
        os.makedirs(self.work)
        self.procs = [subprocess.Popen([hq, "server", "start", "--server-dir", self.sdir],
                                       cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        deadline = time.time() + 30
        while self.cmd(["server", "info"]).returncode != 0:
            if time.time() > deadline:
                sys.exit("scheduler.py: hq server did not start")
            time.sleep(0.1)
        self.procs.append(subprocess.Popen(
            [hq, "worker", "start", "--cpus", str(cpus), "--server-dir", self.sdir,
             "--work-dir", os.path.join(root, "worker")],
            cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 30
        while "RUNNING" not in self.cmd(["worker", "list"]).stdout:
            if time.time() > deadline:
                sys.exit("scheduler.py: hq worker did not join")
            time.sleep(0.1)

    def cmd(self, args, **kw):
        return subprocess.run([self.hq, "--server-dir", self.sdir] + args, cwd=self.work,
                              capture_output=True, text=True, **kw)

    def array(self, n):
        t = time.perf_counter()
        r = self.cmd(["submit", "--array", f"1-{n}", "--stdout", "none", "--stderr", "none", "--wait",
                      "--", "true"], timeout=600)
        if r.returncode != 0:
            sys.exit(f"scheduler.py: hq submit failed: {r.stderr.strip()}")
        return n / (time.perf_counter() - t)

    def latency(self, n, pause):
        lat = []
        for _ in range(n):
            time.sleep(pause)
            t = time.perf_counter()
            self.cmd(["submit", "--stdout", "none", "--stderr", "none", "--wait", "--", "true"], timeout=60)
            lat.append((time.perf_counter() - t) * 1000)
        return statistics.median(lat)

    def stop(self):
        self.cmd(["server", "stop"], timeout=30)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


class Berth:
    def __init__(self, berth, root, slots, extra=()):
        self.berth = berth
        self.swd = os.path.join(root, "swd")
        self.work = os.path.join(root, "work")
        os.makedirs(self.work)
        os.chown(self.work, 65534, 65534)
        self.env = dict(os.environ, BERTH_SWD=self.swd)
        self.up = subprocess.Popen(
            [berth, "up", "--swd", self.swd, "--slots", str(slots), "-r", f"CORES/{slots}", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        sock = os.path.join(self.swd, "berth.sock")
        deadline = time.time() + 30
        while not os.path.exists(sock):
            if time.time() > deadline or self.up.poll() is not None:
                sys.exit("scheduler.py: berth up did not start")
            time.sleep(0.05)
        time.sleep(0.2)

    def nobody(self, args, **kw):
        return subprocess.run([self.berth] + args, cwd=self.work, env=self.env, capture_output=True,
                              text=True, **NOBODY, **kw)

    def all_done(self, last):
        subprocess.run([self.berth, "wait", str(last)], env=self.env, capture_output=True, timeout=600)
        deadline = time.time() + 600
        while subprocess.run([self.berth, "list", "--state", "Queued,Running", "--limit", "1", "--json"],
                             env=self.env, capture_output=True, text=True).stdout.strip() not in ("[]", ""):
            if time.time() > deadline:
                sys.exit("scheduler.py: jobs still not done after 600 s")
            time.sleep(0.05)

    def array(self, n):
        t = time.perf_counter()
        out = self.nobody(["run", "--array", str(n), "--", "true"]).stdout.split()[0]
        first, last = (int(x) for x in out.split("-"))
        self.all_done(last)
        return n / (time.perf_counter() - t)

    def stop(self):
        self.up.terminate()
        self.up.wait(timeout=60)


class Remote(Berth):
    """`berth server --listen 127.0.0.1:0` and `taskers` `berth tasker` processes of
    `slots` slots each, on loopback, over the secure channel."""

    def __init__(self, berth, root, taskers, slots):
        self.berth = berth
        self.swd = os.path.join(root, "swd")
        self.work = os.path.join(root, "work")
        os.makedirs(self.work)
        os.chown(self.work, 65534, 65534)
        self.env = dict(os.environ, BERTH_SWD=self.swd)
        q = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        self.up = subprocess.Popen([berth, "server", "--swd", self.swd, "--listen", "127.0.0.1:0"], **q)
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(self.swd, "listen.addr")):
            if time.time() > deadline:
                sys.exit("scheduler.py: berth server did not start")
            time.sleep(0.05)
        self.taskers = [subprocess.Popen(
            [berth, "tasker", "--swd", self.swd, "--name", f"t{i}", "--slots", str(slots),
             "-r", f"CORES/{slots}"], **q) for i in range(taskers)]
        while True:
            out = subprocess.run([berth, "taskers", "--json"], env=self.env, capture_output=True,
                                 text=True).stdout
            if out.count('"slots"') >= taskers:
                break
            if time.time() > deadline:
                sys.exit("scheduler.py: the taskers did not join")
            time.sleep(0.1)

    def stop(self):
        for p in self.taskers + [self.up]:
            p.terminate()
        for p in self.taskers + [self.up]:
            p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--array", type=int, default=10000)
    ap.add_argument("--separate", type=int, default=1000)
    ap.add_argument("--latency", type=int, default=50)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--dir", default="/var/tmp", help="where the SWDs and job directories go")
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--hq", default=os.path.join(os.path.dirname(REPO), "shared/peers/hq"),
                    help="HyperQueue's hq binary, measured side by side")
    ap.add_argument("--no-hq", action="store_true")
    ap.add_argument("--remote", type=int, default=4,
                    help="taskers of SLOTS/4 slots each for the remote run (0: none)")
    ap.add_argument("--remote-rounds", type=int, default=3,
                    help="pairs of arrays (embedded, then remote) for the remote figure")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scheduler.py: run as root (jobs run as nobody)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "berth"], cwd=REPO, check=True)
    berth = os.path.join(REPO, "target/release/berth")
    wait_for_deletions_to_age(a.no_wait)
    root = tempfile.mkdtemp(prefix="berth-sched-", dir=a.dir)
    os.chmod(root, 0o755)
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", root], capture_output=True,
                        text=True).stdout.strip()
    print(f"in {root} ({fs}), {a.slots} slots, jobs `true` as nobody")
    try:
        b = Berth(berth, os.path.join(root, "durable"), a.slots)
        try:
            r = b.array(a.array)
            print(f"array of {a.array}, commits fsynced (as shipped): {r:8.0f} jobs/s")

            t = time.perf_counter()
            procs, ids = [], []
            for i in range(a.separate):
                procs.append(subprocess.Popen([berth, "run", "--", "true"], cwd=b.work, env=b.env,
                                              stdout=subprocess.PIPE, text=True, **NOBODY))
                if len(procs) >= 8:
                    ids.append(int(procs.pop(0).communicate()[0]))
            ids += [int(p.communicate()[0]) for p in procs]
            b.all_done(max(ids))
            dt = time.perf_counter() - t
            print(f"{a.separate} separate `berth run` processes, 8 at a time: {a.separate / dt:8.0f} jobs/s")

            for pause in (0.0, 0.5):
                starts, dones, client = [], [], []
                for _ in range(a.latency):
                    time.sleep(pause)
                    t0 = time.perf_counter()
                    out = b.nobody(["run", "-w", "--json", "--", "true"]).stdout
                    client.append((time.perf_counter() - t0) * 1000)
                    v = json.loads(out)[0]
                    starts.append(v["started_ms"] - v["submitted_ms"])
                    dones.append(v["ended_ms"] - v["submitted_ms"])
                print(f"one job, pause {pause} s: submit->start median {statistics.median(starts):.1f} ms, "
                      f"submit->Done median {statistics.median(dones):.1f} ms (n={a.latency}, server clock, "
                      f"ms resolution); `berth run -w` median {statistics.median(client):.1f} ms (client clock)")
            rss = [l for l in open(f"/proc/{b.up.pid}/status") if l.startswith("VmRSS")]
            print(f"server resident memory after the runs: {rss[0].split()[1]} kB")
        finally:
            b.stop()

        # The same array without one of berth's costs: what each costs.
        for flag, what, cost in [
            ("--no-fsync", "commits not fsynced", "durability"),
            ("--no-keeper", "jobs the tasker's own children",
             "the keeper, which lets jobs outlive the tasker process,"),
        ]:
            b = Berth(berth, os.path.join(root, flag.lstrip("-")), a.slots, [flag])
            try:
                r2 = b.array(a.array)
                print(f"array of {a.array}, {what} ({flag}): {r2:8.0f} jobs/s "
                      f"({cost} costs {100 * (1 - r / r2):.0f} %)")
            finally:
                b.stop()

        if a.remote:
            # One array against one array minutes apart measures the machine's drift as much
            # as the difference (a single pair spreads by +-4 % here): pairs, back to back,
            # each the embedded then the remote, and the median of their ratios.
            per = max(1, a.slots // a.remote)
            ratios = []
            for i in range(a.remote_rounds):
                b = Berth(berth, os.path.join(root, f"pair{i}-embedded"), a.slots)
                try:
                    re_ = b.array(a.array)
                finally:
                    b.stop()
                rb = Remote(berth, os.path.join(root, f"pair{i}-remote"), a.remote, per)
                try:
                    rr = rb.array(a.array)
                finally:
                    rb.stop()
                ratios.append(rr / re_)
                print(f"array of {a.array}, pair {i + 1}: embedded {re_:8.0f} jobs/s, {a.remote} remote "
                      f"taskers of {per} slots (berth server + berth tasker on loopback, secure channel) "
                      f"{rr:8.0f} jobs/s ({100 * rr / re_:.0f} %)")
            print(f"remote taskers: median {100 * statistics.median(ratios):.0f} % of the embedded "
                  f"(pairs: {', '.join(f'{100 * x:.0f} %' for x in ratios)})")

        if a.no_hq or not os.access(a.hq, os.X_OK):
            print(f"hyperqueue: not measured ({'--no-hq' if a.no_hq else a.hq + ' not found'})")
        else:
            h = HyperQueue(a.hq, os.path.join(root, "hq"), a.slots)
            try:
                rh = h.array(a.array)
                print(f"hyperqueue, same run: array of {a.array}, worker of {a.slots} cpus: {rh:8.0f} tasks/s "
                      f"(berth {r / rh:.2f} times that)")
                for pause in (0.0, 0.5):
                    print(f"hyperqueue, one job, pause {pause} s: submit->finished median "
                          f"{h.latency(a.latency, pause):.1f} ms (client clock, `hq submit --wait`, n={a.latency})")
            finally:
                h.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with open(STAMP, "w"):
            pass


if __name__ == "__main__":
    main()
