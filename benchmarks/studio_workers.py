"""Studio throughput with 1 and 2 ``aigc worker`` processes against one PostgreSQL.

    python benchmarks/studio_workers.py                      # 300 tiny jobs, then 60 at 256 px
    python benchmarks/studio_workers.py --jobs 100 --size 0 --workers 1 2

Starts a throwaway PostgreSQL 15 cluster (tests/pg_cluster.py: Debian's initdb/pg_ctl in a
temporary folder, fsync off), and for each job size and each worker count: a fresh database,
K worker processes (``aigc worker --no-batching``: one job per claim, so the claim path is
what is timed, with the tiny 8x8 VAE of the studio tests), waits until every worker has
loaded its model, puts N image jobs in the queue in one go, and times from then until the
last job's ``finished`` stamp. Prints jobs/s and the speed-up of 2 workers over 1, and checks
that every job finished exactly once (one attempt, one item each).

``--size 0`` draws the model's native 8x8 images: the job costs almost nothing and the figure
is the queue's own overhead (claim, finish, NOTIFY, polling). ``--size 256`` upscales every
image to 256x256 before the PNG is written: a job costs some CPU, as real ones do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test tier's cluster and tiny model
sys.path.insert(0, str(ROOT / "benchmarks"))


def _phase(cluster, tmp: Path, n_workers: int, n_jobs: int, size: int) -> dict:
    from aigc.studio.store import Store

    url = cluster.new_database()
    store = Store(tmp / "data", url)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    procs = []
    for k in range(n_workers):
        cmd = [sys.executable, "-m", "aigc.cli", "worker", "--db", url, "--data",
               str(tmp / "data"), "--models", str(tmp / "models"), "--no-starters",
               "--no-ngram", "--kinds", "image", "--no-batching", "--name", f"w{k}",
               "--log-level", "warning"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:  # the line printed once the worker has loaded its models
            line = p.stdout.readline()
            if not line.startswith("aigc worker"):
                raise RuntimeError(f"a worker did not start: {line!r}")
        params = {"n": 1, "temperature": 1.0, "label": None, "prompt": None, "steps": None,
                  "guidance": None, "sampler": None, "size": size or None}
        t0 = time.time()
        for i in range(n_jobs):
            store.add_job("image", "tiny-vae", {**params, "seed": i}, 0.0)
        deadline = t0 + 600
        while store.job_counts()["done"] < n_jobs:
            if time.time() > deadline:
                raise RuntimeError(f"not finished in 600 s: {store.job_counts()}")
            time.sleep(0.05)
        jobs = store.list_jobs(limit=n_jobs + 1)
        last = max(j["finished"] for j in jobs)
        assert len(jobs) == n_jobs and {j["attempts"] for j in jobs} == {1}
        assert store.count_items() == n_jobs
        per_worker = {}
        for j in jobs:
            per_worker[j["worker"]] = per_worker.get(j["worker"], 0) + 1
        return {"workers": n_workers, "jobs": n_jobs, "size": size or 8,
                "seconds": round(last - t0, 3), "jobs_per_s": round(n_jobs / (last - t0), 2),
                "jobs_by_worker": dict(sorted(per_worker.items()))}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[300, 60],
                    help="jobs per phase, one per --size (default 300 60)")
    ap.add_argument("--size", type=int, nargs="+", default=[0, 256],
                    help="image size per phase; 0 = native 8x8 (default 0 256)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if len(args.jobs) != len(args.size):
        raise SystemExit("--jobs and --size need the same number of values")
    from _machine import machine_line
    from pg_cluster import Cluster, missing_reason
    from studio_fixtures import make_models

    why = missing_reason()
    if why:
        raise SystemExit(why)
    print(machine_line())
    print(f"cores: {os.cpu_count()} (shared with other work: figures are indicative)")
    cluster = Cluster().start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            make_models(Path(tmp))
            for n_jobs, size in zip(args.jobs, args.size, strict=True):
                for k in args.workers:
                    row = _phase(cluster, Path(tmp), k, n_jobs, size)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        cluster.stop()
    for size in dict.fromkeys(r["size"] for r in rows):
        by = {r["workers"]: r["jobs_per_s"] for r in rows if r["size"] == size}
        if 1 in by and 2 in by:
            print(f"size {size}: 1 worker {by[1]} jobs/s, 2 workers {by[2]} jobs/s, "
                  f"speed-up {by[2] / by[1]:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
