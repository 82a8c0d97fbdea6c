"""Analysis jobs through a real worker against pandas doing the same, on one generated data set.

    python bench/analysis.py                 # 10,000,000 rows (CSV about 800 MB; generated once)
    python bench/analysis.py --rows 1000000  # quicker
    python bench/analysis.py --quick         # 1,000,000 rows

For the CSV and the Parquet copy of the orders data set (tasks/analysis/sample.py), it runs
`analysis.profile` and a group-by-day-and-region `analysis.aggregate` (count, sum, mean and
p95 of amount) as jobs on a Conveyor worker (2 processes, DuckDB with 2 threads), then pandas
doing the same in a fresh process. Wall time is enqueue to result (the job) or start to end
(pandas); peak memory is the peak RSS of the worker's pool process that ran the job (sampled)
or of the pandas process. Targets on 2 cores: aggregate on Parquet under 3 s, on CSV under
10 s, memory under 2 GB.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # not bench/, where email.py would shadow the standard library

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
BROKER, RESULTS = f"{REDIS}/5", f"{REDIS}/4"
AGGREGATE = {"group_by": ["region"], "bucket": "day:created_at",
             "metrics": ["count", "sum:amount", "mean:amount", "p95:amount"]}
TARGETS = {("aggregate", "parquet"): 3.0, ("aggregate", "csv"): 10.0}
MEMORY_TARGET_MB = 2048

PANDAS = r"""
import sys, time
import pandas as pd
op, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if path.endswith(".csv"):
    df = pd.read_csv(path, parse_dates=["created_at"])
else:
    df = pd.read_parquet(path)
    df["amount"] = df["amount"].astype(float)  # Decimal objects would make pandas far slower
if op == "aggregate":
    out = df.groupby([df["created_at"].dt.floor("D"), "region"])["amount"].agg(
        ["count", "sum", "mean", lambda s: s.quantile(0.95)])
else:
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    out = [df.describe(include="all", percentiles=qs), df.nunique(), df.isna().sum(),
           {c: df[c].value_counts().head(10) for c in df.columns},
           df.groupby(df["created_at"].dt.date).size()]
print(time.perf_counter() - t)
"""


def generate(rows: int, folder: Path) -> dict[str, Path]:
    from tasks.analysis.sample import generate as make

    target = folder / f"orders-{rows}"
    files = {"csv": target / "orders.csv", "parquet": target / "orders.parquet"}
    if not all(f.exists() for f in files.values()):
        t = time.perf_counter()
        make(target, rows, csv=True, parquet=True, partitioned=False)
        print(f"generated {rows:,} rows in {time.perf_counter() - t:.1f}s under {target}")
    return files


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss:
    """Samples the RSS of a worker's pool processes; keeps the largest seen."""

    def __init__(self, main_pid: int) -> None:
        self.main_pid = main_pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.main_pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def _run(self) -> None:
        kids = self._children()
        while not self._stop.is_set():
            self.peak = max([self.peak, *(rss_mb(p) for p in kids)])
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_pandas(op: str, path: Path) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, "-c", PANDAS, op, str(path)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"pandas {op} failed")
    return float(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows")
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "bench-analysis",
                        help="where the generated data sets are kept between runs")
    parser.add_argument("--no-pandas", action="store_true")
    args = parser.parse_args()
    rows = 1_000_000 if args.quick else args.rows

    import redis

    from jobs.migrate import upgrade

    files = generate(rows, args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    db = f"sqlite:///{work / 'jobs.db'}"
    upgrade(db)
    for url in (BROKER, RESULTS):
        redis.Redis.from_url(url).flushdb()
    env = {**os.environ, "CONVEYOR_BROKER_URL": BROKER, "CONVEYOR_RESULT_BACKEND": RESULTS,
           "CONVEYOR_DATABASE_URL": db, "CONVEYOR_DATA_DIR": str(args.data),
           "CONVEYOR_RESULTS_DIR": str(work / "results"), "CONVEYOR_WORKER_CONCURRENCY": "2"}
    os.environ.update(env)
    log = open(work / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-c", "2", "-l", "WARNING",
         "-Q", "analysis", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results: list[tuple[str, str, str, float, float]] = []
    try:
        from jobs.client import default_client

        client = default_client()
        deadline = time.monotonic() + 60
        while not (client.app.control.ping(timeout=0.5) or []):
            if time.monotonic() > deadline or worker.poll() is not None:
                print(f"the worker did not start; see {work / 'worker.log'}")
                return 1
        client.enqueue("analysis.profile", {"path": str(files["parquet"].relative_to(args.data)),
                                            "columns": ["region"]}).wait(timeout=600)  # warm the pool
        for fmt in ("parquet", "csv"):
            rel = str(files[fmt].relative_to(args.data))
            for op, payload in (("aggregate", AGGREGATE), ("profile", {})):
                with PeakRss(worker.pid) as peak:
                    t = time.perf_counter()
                    client.enqueue(f"analysis.{op}", {"path": rel, **payload}).wait(timeout=3600)
                    wall = time.perf_counter() - t
                results.append((op, fmt, "conveyor + duckdb", wall, peak.peak))
                print(f"{op:9} {fmt:7} conveyor {wall:7.2f}s {peak.peak:7.0f} MB", flush=True)
                if not args.no_pandas:
                    pwall, pmem = run_pandas(op, files[fmt])
                    results.append((op, fmt, "pandas", pwall, pmem))
                    print(f"{op:9} {fmt:7} pandas   {pwall:7.2f}s {pmem:7.0f} MB", flush=True)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
        log.close()

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"analysis on {rows:,} rows ({os.cpu_count()} CPUs seen)")
    for col in ("job", "data", "engine", "wall s", "peak MB", "target"):
        table.add_column(col, justify="right" if col in ("wall s", "peak MB") else "left")
    for op, fmt, engine, wall, mem in results:
        target = TARGETS.get((op, fmt))
        mark = ""
        if engine.startswith("conveyor") and target is not None:
            ok = wall <= target and mem <= MEMORY_TARGET_MB
            mark = f"{'met' if ok else 'MISSED'} (< {target:g} s, < {MEMORY_TARGET_MB} MB)"
        table.add_row(op, fmt, engine, f"{wall:.2f}", f"{mem:.0f}", mark)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
