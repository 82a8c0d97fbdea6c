"""Redis high availability: a worker and a producer on Sentinel URLs keep going when Sentinel
promotes the replica (a master, a replica and one Sentinel of the test's own, on free ports)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.models import JobStatus
from tests.conftest import free_port, missing, wait_until

MASTER = "conveyor-test"


class Node:
    def __init__(self, args: list[str], port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2)
        wait_until(self._up, timeout=10, interval=0.05, message=f"redis on port {port}")

    def _up(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[dict[str, Node]]:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server binary")
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    m, r, s = free_port(), free_port(), free_port()
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    nodes = {"master": Node([binary, "--port", str(m), "--dir", str(tmp_path / "m"), *common], m)}
    nodes["replica"] = Node([binary, "--port", str(r), "--dir", str(tmp_path / "r"), *common,
                             "--replicaof", "127.0.0.1", str(m)], r)
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {s}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {m} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 5000\n")
    nodes["sentinel"] = Node([binary, str(conf), "--sentinel"], s)
    wait_until(lambda: nodes["replica"].client.info("replication").get("master_link_status") == "up",
               timeout=20, message="the replica to sync")
    try:
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@pytest.mark.slow
def test_jobs_flow_through_a_sentinel_failover(sentinel_set, make_settings, sqlite_url, client_for,
                                              start_worker, run_cli):
    sentinel_port = sentinel_set["sentinel"].port
    url = f"sentinel://127.0.0.1:{sentinel_port}/0"
    settings = make_settings(broker_url=url, result_backend=url, redis_sentinel_master=MASTER,
                             database_url=sqlite_url)
    c = client_for(settings)
    start_worker(settings)
    before = [c.enqueue("system.ping", {"message": f"before {i}"}) for i in range(5)]
    for job in before:
        assert job.wait_finished(timeout=60).status == JobStatus.SUCCEEDED

    # Sentinel promotes the replica; the old master steps down and follows it.
    sentinel_set["sentinel"].client.execute_command("SENTINEL", "FAILOVER", MASTER)
    new_port = sentinel_set["replica"].port

    def promoted() -> bool:
        addr = sentinel_set["sentinel"].client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return bool(addr) and int(addr[1]) == new_port

    wait_until(promoted, timeout=30, message="Sentinel to promote the replica")
    time.sleep(1)
    after = []
    deadline = time.monotonic() + 60
    while len(after) < 5:  # a publish during the switch may fail with a clear error: try again
        try:
            after.append(c.enqueue("system.ping", {"message": f"after {len(after)}"}))
        except Exception:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for job in after:
        assert job.wait_finished(timeout=90).status == JobStatus.SUCCEEDED
    # the queues now live on the new master, and Conveyor's own Redis reads follow it
    assert sentinel_set["replica"].client.info("replication")["role"] == "master"
    from worker.health import queue_depths

    assert sum(queue_depths(url, sentinel_master=MASTER).values()) == 0

    def status() -> dict | None:
        out = run_cli(settings, "status", "--json", "--timeout", "1")
        report = json.loads(out.stdout)
        return report if out.returncode == 0 and report["ok"] and report["workers"] else None

    wait_until(status, timeout=60, interval=1, message="`conveyor status` to see the worker again")


def test_sentinel_urls_name_every_sentinel_and_need_the_master():
    from config.redis_client import redis_client

    client = redis_client("sentinel://:s3cret@a:26379/2;sentinel://b:26380/2", "mymaster")
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cret"
    hosts = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
             for s in pool.sentinel_manager.sentinels]
    assert hosts == [("a", 26379), ("b", 26380)]
    with pytest.raises(ValueError, match="CONVEYOR_REDIS_SENTINEL_MASTER"):
        redis_client("sentinel://a:26379/0")
    assert redis_client("redis://h:6380/3").connection_pool.connection_kwargs["port"] == 6380
