"""Performance patches for kombu and Celery (placeholder: filled in with the benchmark)."""

from __future__ import annotations

from celery import Celery


def apply(app: Celery) -> None:
    """Apply the patches this app's settings ask for."""
