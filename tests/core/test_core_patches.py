"""Conveyor's changes to Celery and kombu still do what they say on these versions."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis as redis_lib
from kombu import Connection, Exchange, Queue
from kombu.utils.json import loads

from worker import patches

pytestmark = pytest.mark.one_database  # the job store is not the subject here


def test_versions_are_the_tested_ones():
    import celery
    import kombu

    assert patches._tested("celery", celery.__version__), "re-run bench/throughput.py and the tests"
    assert patches._tested("kombu", kombu.__version__), "re-run bench/throughput.py and the tests"
    assert patches._tested("redis", redis_lib.__version__), "re-run bench/throughput.py and the tests"


def test_redis_channel_reuses_one_client_per_pool(redis_url):
    assert patches.reuse_redis_clients()
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
            assert a is b and a.connection_pool is channel.pool
            a.set("conveyor:patch", "1")
        channel._disconnect_pools()  # what kombu does after a fork or reconnect
        with channel.conn_or_acquire() as c:
            assert c is not a and c.connection_pool is channel.pool
            assert c.get("conveyor:patch") == b"1"


def test_app_uses_the_batching_consumer(app):
    assert app.conf.worker_consumer == "worker.patches:ConveyorConsumer"
    from celery.utils.imports import symbol_by_name

    consumer = symbol_by_name(app.conf.worker_consumer)
    assert hasattr(consumer, "on_send_event_buffered") and hasattr(consumer, "_flush_events")


def test_every_task_event_still_reaches_a_monitor(app, client, settings, start_worker):
    """What Flower does (Celery's EventReceiver) still gets all four events of every job."""
    start_worker(settings)
    seen: dict[str, set[str]] = {}
    ready = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": lambda e: seen.setdefault(
                e.get("uuid", ""), set()).add(e["type"])})
            ready.set()
            try:
                recv.capture(limit=None, timeout=20, wakeup=False)
            except Exception:  # noqa: BLE001 - the socket timeout ends the capture
                pass

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(5)
    time.sleep(0.5)
    jobs = client.enqueue_many("system.ping", [{"message": str(i)} for i in range(100)])
    for j in jobs:
        j.wait(timeout=60)
    wanted = {"task-sent", "task-received", "task-started", "task-succeeded"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(wanted <= seen.get(j.id, set()) for j in jobs):
        time.sleep(0.1)
    missing = [j.id for j in jobs if not wanted <= seen.get(j.id, set())]
    assert missing == [], f"{len(missing)} jobs lack events, e.g. {seen.get(missing[0])}"


@pytest.mark.parametrize("version,ok", [("5.7.0", True), ("5.7.9", True), ("5.8.0", False), ("6.0", False)])
def test_untested_versions_are_refused(version, ok):
    assert patches._tested("kombu", version) is ok


def test_cancelled_timers_leave_the_event_loop_schedule_and_the_rest_still_fire():
    """The prefork pool's per-job time-limit timers, cancelled when each job ends, used to stay in
    kombu's schedule until due (an hour): the worker's main process grew with every job."""
    from kombu.asynchronous.timer import Timer

    timer = Timer()
    fired: list[int] = []
    trefs = [timer.call_after(0.01 * (i % 5) + (0 if i % 2 else 3600), fired.append, (i,))
             for i in range(1000)]
    for i, tref in enumerate(trefs):
        if i % 2 == 0:  # the jobs that ended: their hour-long limits cancelled
            tref.cancel()
    assert len(timer) == 1000
    assert patches.purge_cancelled_timers(timer) == 500
    assert len(timer) == 500 and patches.purge_cancelled_timers(timer) == 0
    time.sleep(0.06)
    scheduler = iter(timer)
    while True:
        _, entry = next(scheduler)
        if entry is None:
            break
        entry()
    assert sorted(fired) == list(range(1, 1000, 2))  # every live timer fired, none cancelled


def test_an_unacknowledged_copy_is_stored_as_received_and_restores_the_same_message(redis_url):
    """The copy kombu keeps of a message a worker holds is the text the message arrived as, and
    a lost worker's message comes back with every header as it was sent: kombu's typed values,
    a NaN, an integer past 64 bits, non-ASCII text."""
    assert patches.store_unacked_as_received()
    exchange = Exchange("patched", type="direct")
    queue = Queue("patched", exchange, routing_key="patched")
    headers = {"ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
               "at": datetime(2026, 11, 25, 12, 0, tzinfo=UTC), "ratio": float("nan"),
               "big": 2**70 + 1, "who": "Zoë ☃"}
    client = redis_lib.Redis.from_url(redis_url)

    with Connection(redis_url) as conn:
        conn.Producer().publish({"n": 1}, exchange=exchange, routing_key="patched", declare=[queue],
                                headers=headers, serializer="json")
    # As a producer that writes JSON more tightly than kombu would (orjson, another language).
    sent = json.dumps(json.loads(client.lpop("patched")), separators=(",", ":")).encode()
    client.lpush("patched", sent)

    got: list = []
    conn = Connection(redis_url)
    with conn.Consumer([queue], callbacks=[lambda body, message: got.append(message)]):
        conn.drain_events(timeout=5)
        assert len(got) == 1 and got[0].payload == {"n": 1}  # held, not acknowledged
        (stored,) = client.hvals("unacked")
        # as received, not encoded again
        assert stored.startswith(b"[" + sent + b", ")
        message, ex, rk = loads(stored)
        assert (ex, rk) == ("patched", "patched")
        assert message["headers"]["ref"] == headers["ref"] and message["headers"]["big"] == 2**70 + 1
    conn.release()  # closing the channel with the message unacknowledged gives it back

    redelivered: list = []
    with Connection(redis_url) as conn2:
        with conn2.Consumer([queue], callbacks=[lambda body, message: (redelivered.append(message),
                                                                       message.ack())]):
            conn2.drain_events(timeout=5)
    (again,) = redelivered
    assert again.payload == {"n": 1}
    h = again.headers
    assert h["ref"] == headers["ref"] and isinstance(h["ref"], uuid.UUID)
    assert h["at"] == headers["at"] and h["big"] == 2**70 + 1 and h["who"] == "Zoë ☃"
    assert math.isnan(h["ratio"])
    assert again.delivery_info.get("redelivered") or h.get("redelivered")
    assert client.hlen("unacked") == 0


class _CountedPoller:
    """A hub's real epoll object, its registrations counted per descriptor."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[tuple[str, int]] = []

    def register(self, fd, events):
        self.calls.append(("register", fd if isinstance(fd, int) else fd.fileno()))
        return self.real.register(fd, events)

    def unregister(self, fd):
        self.calls.append(("unregister", fd if isinstance(fd, int) else fd.fileno()))
        return self.real.unregister(fd)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_removing_a_writer_the_loop_does_not_have_asks_epoll_nothing_and_keeps_the_reader():
    import socket

    from kombu.asynchronous import Hub

    assert patches.skip_redundant_poll_registrations()
    hub = Hub()
    poller = hub.poller = _CountedPoller(hub.poller)
    a, b = socket.socketpair()
    idle, _idle_peer = socket.socketpair()
    try:
        got: list[bytes] = []
        hub.add_reader(a.fileno(), lambda: got.append(a.recv(10)))
        poller.calls.clear()
        hub.remove_writer(idle.fileno())  # what the pool does for every idle child, every round
        hub.remove_writer(a.fileno())  # a reader, not a writer
        assert poller.calls == []
        b.send(b"ping")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            hub.run_once()
        assert got == [b"ping"]  # still watched for reading
        hub.add_writer(idle.fileno(), lambda: None)
        poller.calls.clear()
        hub.remove_writer(idle.fileno())  # a writer it has: removed as before
        assert poller.calls == [("unregister", idle.fileno())] and idle.fileno() not in hub.writers
    finally:
        hub.close()
        for s in (a, b, idle, _idle_peer):
            s.close()


def test_a_redis_consumer_on_the_event_loop_registers_its_sockets_once_not_every_round(redis_url):
    """kombu's Redis transport added its sockets' readers on every round of the loop, each an
    epoll call that failed because they were registered already; messages still all arrive."""
    from kombu.asynchronous import Hub

    assert patches.skip_redundant_poll_registrations()
    queue = Queue(f"loop-{uuid.uuid4().hex[:8]}", Exchange("loop", type="direct"), routing_key="loop")
    hub = Hub()
    poller = hub.poller = _CountedPoller(hub.poller)
    got: list[int] = []
    rounds = 0
    with Connection(redis_url) as conn:
        conn.transport.register_with_event_loop(conn.connection, hub)
        with conn.Consumer([queue], callbacks=[lambda body, message: (got.append(body["n"]), message.ack())]):
            with Connection(redis_url) as producer_conn:
                producer = producer_conn.Producer()
                for n in range(20):
                    producer.publish({"n": n}, exchange=queue.exchange, routing_key="loop", declare=[queue])
            deadline = time.monotonic() + 10
            while len(got) < 20 and time.monotonic() < deadline:
                hub.run_once()
                rounds += 1
    hub.close()
    assert sorted(got) == list(range(20))
    registers = sum(1 for call, _ in poller.calls if call == "register")
    # Its socket and the loop's waker, each once; before, every round added the socket again
    # (22 registrations in 20 rounds).
    assert rounds >= 20 and registers <= 4, (rounds, registers)


def _queue_holding(conn: Connection, count: int, first: int = 0) -> Queue:
    """A new queue with `count` messages `{"n": first}`, `{"n": first + 1}`, ..."""
    queue = Queue(f"book-{uuid.uuid4().hex[:8]}", Exchange("book", type="direct"), routing_key="book")
    for n in range(first, first + count):
        conn.Producer().publish({"n": n}, exchange=queue.exchange, routing_key="book", declare=[queue])
    return queue


def _take_one(conn: Connection, queue: Queue) -> object:
    got: list = []
    consumer = conn.Consumer([queue], callbacks=[lambda body, message: got.append(message)])
    consumer.consume()
    conn.drain_events(timeout=5)
    assert len(got) == 1
    return got[0]


def test_bookkeeping_does_not_wait_for_redis_and_lands_in_order(redis_url):
    """A worker's copy of each message it takes, and its deletion on the acknowledgement, go
    out without waiting for Redis's answer (two round trips a job the worker's main process
    used to wait on), and land in the order they were sent."""
    assert patches.unacked_bookkeeping_without_waiting()
    client = redis_lib.Redis.from_url(redis_url)
    with Connection(redis_url) as conn:
        queue = _queue_holding(conn, 2)
        first = _take_one(conn, queue)
        assert client.hexists("unacked", first.delivery_tag)
        client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # Redis takes no writes for 10 s
        try:
            acked = threading.Thread(target=first.ack)
            acked.start()
            acked.join(5)
            assert not acked.is_alive(), "the acknowledgement waited for Redis"
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        second = _take_one(conn, queue)  # its copy goes out behind the first one's deletion
        second.ack()  # sent at once after it: the copy must land before its deletion
        patches.settle_bookkeeping(conn.default_channel.qos)
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_a_refused_bookkeeping_command_is_logged_and_the_next_ones_land(redis_url, caplog):
    assert patches.unacked_bookkeeping_without_waiting()
    client = redis_lib.Redis.from_url(redis_url)
    with Connection(redis_url) as conn:
        queue = _queue_holding(conn, 2)
        client.set("unacked", "not a hash")  # every HSET into it fails (WRONGTYPE)
        first = _take_one(conn, queue)
        patches.settle_bookkeeping(conn.default_channel.qos)
        assert "Redis refused" in caplog.text and "WRONGTYPE" in caplog.text
        client.delete("unacked")
        second = _take_one(conn, queue)
        patches.settle_bookkeeping(conn.default_channel.qos)
        assert client.hexists("unacked", second.delivery_tag)
        first.ack()
        second.ack()
        patches.settle_bookkeeping(conn.default_channel.qos)
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_a_message_held_when_its_channel_closes_is_given_back_even_before_its_copy_was_answered(redis_url):
    assert patches.unacked_bookkeeping_without_waiting()
    client = redis_lib.Redis.from_url(redis_url)
    conn = Connection(redis_url)
    queue = _queue_holding(conn, 1, first=1)
    held = _take_one(conn, queue)
    book = conn.default_channel.qos.__dict__["_conveyor_bookkeeping"]
    assert book.unanswered  # the copy was sent, its answer not read yet
    conn.release()  # closing the channel with the message unacknowledged gives it back
    assert client.llen(queue.name) == 1 and client.hlen("unacked") == 0
    with Connection(redis_url) as conn2:
        again = _take_one(conn2, queue)
        assert again.payload == {"n": 1} and again.delivery_tag == held.delivery_tag
        again.ack()
