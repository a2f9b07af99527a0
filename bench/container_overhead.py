#!/usr/bin/env python3
"""What berth adds to a container job, measured side by side in one run.

    python3 bench/container_overhead.py [--runs N]

Run as root, on a machine with podman, runc and busybox-static (.ci/run installs them).
It builds berth in release mode, makes a busybox image from local files, installs the
docker example with podman as its engine, then times, interleaved, N runs of each of:

  podman    the `podman run --rm ... IMAGE berth-vw true` that docker.cfg's enter hook runs
  docker    `berth container try --user nobody docker -- true`: the same, through berth
  vw        `berth-vw true`: the wrapper alone
  null      `berth container try --user nobody null -- true`, where null.cfg's only hook
            (user enter) execs "$@": berth's whole life cycle with no container

berth's overhead per container job is docker - podman; null - vw isolates berth's own work
(process start, checks, record written and fsynced, hook spawned as nobody, status read).
It prints figures and asserts nothing.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "localhost/berth-test:latest"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def setup(root):
    conf = os.path.join(REPO, "examples/containers/containers.conf")
    os.environ["CONTAINERS_CONF"] = conf
    rootfs = os.path.join(root, "rootfs")
    sh("sh", os.path.join(REPO, "examples/containers/make-image.sh"), rootfs, IMAGE, stdout=subprocess.DEVNULL)
    return conf, rootfs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--berth", help="a berth binary to measure instead of this checkout's (not built)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("container_overhead.py: run as root (hooks run as root, jobs as nobody)")
    berth = args.berth
    if not berth:
        sh("cargo", "build", "--release", "-q", "-p", "berth", cwd=REPO)
        berth = os.path.join(REPO, "target/release/berth")
    root = tempfile.mkdtemp(prefix="berth-bench-")
    os.chmod(root, 0o755)
    try:
        conf, rootfs = setup(root)
        swd = os.path.join(root, "swd")
        hooks = os.path.join(root, "hooks")
        work = os.path.join(root, "work")
        os.makedirs(work)
        os.chown(work, 65534, 65534)
        sh("sh", os.path.join(REPO, "examples/containers/install.sh"), "--swd", swd, "--hooks", hooks,
           "--berth", berth, "--engine", "podman", "--image", IMAGE, "--containers-conf", conf,
           "docker", stdout=subprocess.DEVNULL)
        null_hook = os.path.join(hooks, "null-enter.sh")
        with open(null_hook, "w") as f:
            f.write('#!/bin/sh\nexec "$@"\n')
        os.chmod(null_hook, 0o755)
        sig = subprocess.run([berth, "signfile", null_hook], check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(swd, "containers/null.cfg"), "w") as f:
            f.write(f"containerHook enter user {null_hook} {sig}\n")
        env = dict(os.environ, BERTH_SWD=swd)
        # One try installs the wrapper in SWD/bin.
        sh(berth, "container", "try", "--user", "nobody", "null", "--", "true", cwd=work, env=env,
           stderr=subprocess.DEVNULL)
        vw = os.path.join(swd, "bin/berth-vw")
        host = os.uname().nodename.split(".")[0]
        envfile = os.path.join(root, "env")
        with open(envfile, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in env.items() if "\n" not in v))
        podman = ["podman", "run", "--rm", "--name", f"bench-{host}-docker-0", "--user", "65534:65534",
                  "--env-file", envfile, "--volume", f"{work}:{work}", "--workdir", work,
                  "--volume", f"{os.path.dirname(vw)}:{os.path.dirname(vw)}:ro", "--cpus", "1",
                  "--tmpfs", "/tmp:rw,nosuid,nodev,size=100m", IMAGE, vw, "true"]
        cases = {
            "podman": podman,
            "docker": [berth, "container", "try", "--user", "nobody", "--project", "bench", "docker", "--", "true"],
            "vw": [vw, "true"],
            "null": [berth, "container", "try", "--user", "nobody", "null", "--", "true"],
        }
        times = {k: [] for k in cases}
        for _ in range(2):  # warm up
            for cmd in cases.values():
                subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(args.runs):
            for name, cmd in cases.items():
                t = time.perf_counter()
                r = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                dt = time.perf_counter() - t
                if r.returncode != 0:
                    sys.exit(f"{name} failed: {r.stderr.decode()}")
                times[name].append(dt * 1000)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"container job overhead, median of {args.runs} interleaved runs each (ms)")
        for k in cases:
            v = sorted(times[k])
            print(f"  {k:7} median {med[k]:8.2f}   min {v[0]:8.2f}   max {v[-1]:8.2f}")
        print(f"berth's overhead on a podman job (docker - podman): {med['docker'] - med['podman']:+.2f} ms (target < 5 ms)")
        print(f"berth's own life cycle without a container (null - vw): {med['null'] - med['vw']:+.2f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
