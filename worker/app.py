"""The Celery app, for `celery -A worker.app ...` and for importers that need the one app."""

from worker.factory import create_app

app = create_app()
