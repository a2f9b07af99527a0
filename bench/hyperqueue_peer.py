#!/usr/bin/env python3
"""HyperQueue, the peer, measured on this machine the way bench/scheduler.py measures berth.

    python3 -m venv /tmp/hqenv && /tmp/hqenv/bin/pip install hyperqueue
    /tmp/hqenv/bin/python bench/hyperqueue_peer.py [--array 10000] [--latency 30]

The `hyperqueue` package from PyPI runs a real HyperQueue server and worker in-process
(LocalCluster). One worker with 16 cores, as `berth up --slots 16`; jobs run `true`.
Its `wait_for_jobs` polls once a second, so the array's time is measured to about a
second, and one-job latency (--latency N) shows the poll, not HyperQueue.
It prints figures and asserts nothing.
"""
import argparse, statistics, tempfile, time

from hyperqueue import Job, LocalCluster
from hyperqueue.cluster import WorkerConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--array", type=int, default=10000)
    # The Python API waits by polling once a second, so a one-job latency measured through
    # it is that poll, not HyperQueue: off unless asked for.
    ap.add_argument("--latency", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, LocalCluster(d, WorkerConfig(cores=16)) as cluster:
        client = cluster.client()
        job = Job()
        for _ in range(a.array):
            job.program(["true"])
        t = time.perf_counter()
        sub = client.submit(job)
        client.wait_for_jobs([sub])
        dt = time.perf_counter() - t
        print(f"hyperqueue: {a.array} `true` tasks in one job: {a.array / dt:8.0f} tasks/s ({dt:.2f} s)")
        for pause in ((0.0, 0.5) if a.latency else ()):
            lat = []
            for _ in range(a.latency):
                time.sleep(pause)
                j = Job()
                j.program(["true"])
                t = time.perf_counter()
                s = client.submit(j)
                client.wait_for_jobs([s])
                lat.append((time.perf_counter() - t) * 1000)
            print(f"hyperqueue: one job, pause {pause} s: submit->done median {statistics.median(lat):.1f} ms (client clock, n={a.latency})")


if __name__ == "__main__":
    main()
