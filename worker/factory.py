"""`create_app(settings)`: the Celery app, its configuration derived from `Settings` in one place."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from config import Settings, get_settings
from tasks import load_all
from tasks.registry import DEFAULT_QUEUE, FAMILY_QUEUES, QUEUES
from worker.base import ConveyorTask


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings for `settings`: JSON only, late acks, events on, family queues."""
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.redis_sentinel_master:
        transport["master_name"] = settings.redis_sentinel_master
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickled message is refused (and logged) by the worker, never run.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A killed worker's job runs again: ack after the run, requeue when the child is lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # The job store holds results; Celery's backend is only for chords that ask for it.
        "task_ignore_result": True,
        "result_expires": 24 * 3600,
        # Flower sees the whole life cycle.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        "task_default_queue": DEFAULT_QUEUE,
        "task_default_exchange": DEFAULT_QUEUE,
        "task_default_routing_key": DEFAULT_QUEUE,
        "task_routes": {f"{family}.*": {"queue": q, "routing_key": q} for family, q in FAMILY_QUEUES.items()},
        "timezone": settings.timezone,
        "enable_utc": True,
        "worker_concurrency": settings.worker_concurrency,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child,
        "worker_max_memory_per_child": settings.worker_max_memory_per_child,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_publish_retry_policy": {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1,
        },
        "broker_connection_timeout": 3,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def create_app(settings: Settings | None = None, *, patch: bool = True) -> Celery:
    """A Celery app configured from `settings`, with every registered task and lifecycle recording."""
    from worker import lifecycle, patches, recovery, relay, shutdown

    settings = settings or get_settings()
    app = Celery("conveyor", set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.conveyor_settings = settings
    for spec in load_all(settings.task_modules).values():
        options = {
            "name": spec.name,
            "base": ConveyorTask,
            "bind": False,
            "spec": spec,
            "queue": spec.queue,
            **spec.options,
        }
        app.task(**options)(spec.fn)
    if settings.security_key and settings.security_certificate and settings.security_cert_store:
        # Signed messages: task messages go out as `auth` (JSON inside, signed) and only signed
        # ones are accepted; every other serializer is disabled in this process.
        app.conf.update(task_serializer="auth", accept_content=["auth"],
                        result_accept_content=["json", "auth"],
                        security_key=str(settings.security_key),
                        security_certificate=str(settings.security_certificate),
                        security_cert_store=settings.security_cert_store, security_digest="sha256")
        app.setup_security(allowed_serializers=["json"], serializer="json")
    lifecycle.connect(app)
    recovery.install(app)
    relay.install(app)
    shutdown.install(app)
    if patch:
        patches.apply(app)
    return app
