"""Fixtures of the chaos tests, built on tests/conftest.py's helpers.

Every test here runs on a Redis of its own (`private_redis`: the test may kill, restart or
wipe it) and, unless its subject is PostgreSQL, a SQLite job store of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.chaos.support import APP_TASKS, FAST_RECOVERY


@pytest.fixture
def chaos_settings(make_settings: Callable[..., Any], private_redis: Any, sqlite_url: str) -> Any:
    """Settings on the test's own Redis and SQLite store, with recovery that acts in seconds."""
    return make_settings(broker_url=private_redis.url, result_backend=private_redis.url,
                         database_url=sqlite_url, task_modules=APP_TASKS, **FAST_RECOVERY)


@pytest.fixture
def client_for() -> Iterator[Callable[[Any], Any]]:
    """`client_for(settings)`: a `Client` on its own app; recorders closed at teardown."""
    from jobs.client import Client
    from worker.factory import create_app

    def build(settings: Any) -> Any:
        return Client(create_app(settings))

    yield build
    from jobs.recorder import close_recorders

    close_recorders()


@pytest.fixture
def chaos_client(chaos_settings: Any, client_for: Callable[[Any], Any]) -> Any:
    return client_for(chaos_settings)
