"""Registers every table on `Base.metadata`: the job store's, the scheduler's, each family's
(for Alembic and the tests)."""

import scheduler.models  # noqa: F401 - the scheduler is not a task family
from jobs import models  # noqa: F401
from tasks import load_all

load_all()  # families import their own models
