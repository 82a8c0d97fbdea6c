"""Registers every table on `Base.metadata`: the job store's, then each family's (for Alembic, tests)."""

from jobs import models  # noqa: F401
import scheduler.models  # noqa: F401 - the scheduler is not a task family
from tasks import load_all

load_all()  # families import their own models
