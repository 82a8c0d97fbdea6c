"""Reconciliation at scale: a month of ~1,000,000 ledger lines against ~1,000,000 statement lines.

    python bench/reconcile.py                          # 1M x 1M, SQLite and PostgreSQL
    python bench/reconcile.py --quick                  # 50k lines, to check it runs
    python bench/reconcile.py --rows 200000 --db sqlite --format parquet

End to end through a real worker (one prefork child on the reconciliation queue): read both
files, match, store every item, write the report. The data has a realistic mix of every
match and discrepancy (samples/reconciliation/generate.py) and a known ground truth, which
each run is checked against. Prints wall time (enqueue to finished, as a client sees it),
the worker child's peak memory (VmHWM) and the run's own stage timings, next to a
straightforward pandas merge doing only rule 1 (exact reference, amount, currency) on the
same files. Target: under 20 s and under 2 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/reconcile.py`, bench/ would come first on the path, and a bench module
# named like a standard one (bench/email.py) would hide it: import from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
BROKER, RESULTS = f"{REDIS}/9", f"{REDIS}/8"
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
STATEMENT_LINES_PER_UNIT = 0.995  # statement lines per generated scenario (ledger lines: ~1.09)


def generate(rows: int, fmt: str, cache: Path) -> dict[str, Path]:
    """The bench month (cached by size and format: generating a million lines takes a while)."""
    from samples.reconciliation import generate as gen

    out = cache / f"{rows}-{fmt}-v3"
    paths = {
        "ledger": out / f"ledger.{fmt}",
        "statement": out / f"statement.{fmt}",
        "truth": out / "truth.json",
    }
    if not all(p.exists() for p in paths.values()):
        started = time.perf_counter()
        month = gen.generate(units=int(rows / STATEMENT_LINES_PER_UNIT) + 1, seed=7)
        gen.write(month, out, fmt, camt=False)
        print(
            f"generated {len(month.ledger):,} ledger and {len(month.statement):,} statement lines "
            f"in {time.perf_counter() - started:.1f}s -> {out}"
        )
    return paths


def database(kind: str, tmp: Path) -> tuple[str, Any]:
    from jobs.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
        upgrade(url)
        return url, lambda: None
    import sqlalchemy as sa

    name = f"bench_recon_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)

    def drop() -> None:
        from jobs.db import dispose_engines

        dispose_engines()
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop


def peak_kib(pid: int) -> int:
    """The highest VmHWM among `pid`'s children (the prefork child that ran the job)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    peak = 0
    for child in out:
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


def run_worker_bench(kind: str, data_dir: Path, paths: dict[str, Path], tmp: Path) -> dict[str, Any]:
    from config import Settings
    from jobs.client import Client
    from worker.factory import create_app

    url, drop = database(kind, tmp)
    settings = Settings(
        _env_file=None,
        broker_url=BROKER,
        result_backend=RESULTS,
        database_url=url,
        data_dir=data_dir,
        results_dir=tmp / "results",
        task_time_limit=3600,
    )
    for db in (BROKER, RESULTS):
        redis.Redis.from_url(db).flushdb()
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": BROKER,
        "CONVEYOR_RESULT_BACKEND": RESULTS,
        "CONVEYOR_DATABASE_URL": url,
        "CONVEYOR_DATA_DIR": str(data_dir),
        "CONVEYOR_RESULTS_DIR": str(tmp / "results"),
        "CONVEYOR_TASK_TIME_LIMIT": "3600",
    }
    log = open(tmp / f"worker-{kind}.log", "wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-c",
            "1",
            "-l",
            "WARNING",
            "-Q",
            "reconciliation",
            "-n",
            f"bench-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    app = create_app(settings)
    client = Client(app)
    try:
        deadline = time.monotonic() + 60
        while not (app.control.ping(timeout=0.5) or []):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {tmp / f'worker-{kind}.log'}")
        rel = {k: str(paths[k].relative_to(data_dir)) for k in ("ledger", "statement")}
        started = time.perf_counter()
        job = client.enqueue("reconciliation.reconcile", {**rel, "force": True})
        done = job.wait_finished(timeout=3600, poll=0.05)
        wall = time.perf_counter() - started
        if done.status != "succeeded":
            raise RuntimeError(f"the job {done.status}: {done.error_message}")
        result = done.result
        truth = json.loads(paths["truth"].read_text())["counts"]
        got = {k: v for k, v in result["counts"].items() if v}
        return {
            "system": "conveyor reconcile (worker)",
            "db": kind,
            "wall_s": wall,
            "peak_mb": peak_kib(worker.pid) / 1024,
            "items": sum(got.values()),
            "matched": result["matches"],
            "correct": got == truth,
            "timings": result["timings"],
        }
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
        from jobs.recorder import close_recorders

        close_recorders()
        app.close()
        drop()


PANDAS_RULE1 = r"""
import json, resource, sys, time
import pandas as pd
started = time.perf_counter()
fmt, ledger, statement = sys.argv[1:4]
read = (lambda p: pd.read_parquet(p).astype(str)) if fmt == "parquet" else \
    (lambda p: pd.read_csv(p, dtype=str, keep_default_na=False))
l, s = read(ledger), read(statement)
for df in (l, s):
    df["key"] = df["reference"].str.strip().str.lower()
    df["amount"] = df["amount"].str.strip()
l, s = l[l["key"] != ""], s[s["key"] != ""]
l["k"] = l.groupby(["key", "amount", "currency"]).cumcount()
s["k"] = s.groupby(["key", "amount", "currency"]).cumcount()
pairs = l.merge(s, on=["key", "amount", "currency", "k"], suffixes=("_l", "_s"))
print(json.dumps({"matched": len(pairs), "wall_s": time.perf_counter() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_pandas(fmt: str, paths: dict[str, Path]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PANDAS_RULE1, fmt, str(paths["ledger"]), str(paths["statement"])],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.stdout)
    return {
        "system": "pandas merge, rule 1 only (no store, no report)",
        "db": "-",
        **figures,
        "items": figures["matched"],
        "correct": None,
        "timings": {},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="lines on each side, at least (the ledger: ~20%% more)"
    )
    parser.add_argument("--quick", action="store_true", help="50,000 lines: check that it all runs")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "bench-reconcile")
    args = parser.parse_args()
    rows = 50_000 if args.quick else args.rows
    data_dir = args.cache.resolve()
    paths = generate(rows, args.format, data_dir)
    results = [run_pandas(args.format, paths)]
    for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"bench-recon-{kind}-") as tmp:
            results.append(run_worker_bench(kind, data_dir, paths, Path(tmp)))
    truth = json.loads(paths["truth"].read_text())
    print(
        f"\n{truth['ledger_lines']:,} ledger lines x {truth['statement_lines']:,} statement lines "
        f"({args.format}), {os.cpu_count()} cores"
    )
    print(
        f"{'system':<50} {'db':<11} {'wall s':>8} {'peak MB':>8} {'items':>10} {'matched':>10} {'truth':>6}"
    )
    for r in results:
        ok = "" if r["correct"] is None else ("ok" if r["correct"] else "WRONG")
        print(
            f"{r['system']:<50} {r['db']:<11} {r['wall_s']:>8.2f} {r['peak_mb']:>8.0f} {r['items']:>10,} "
            f"{r['matched']:>10,} {ok:>6}"
        )
    stages = ("hash", "read_ledger", "read_statement", "match", "items", "report", "store", "total")
    for r in results:
        if r["timings"]:
            shown = ", ".join(f"{k} {r['timings'][k + '_s']:.2f}" for k in stages if k + "_s" in r["timings"])
            print(f"  {r['db']} stages in the worker, s (report and store overlap): {shown}")
    return 0 if all(r["correct"] in (None, True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
