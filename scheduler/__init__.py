"""Schedules kept in the database and the Celery beat scheduler that fires them exactly once.

- `scheduler.models`: the tables (imported by `jobs.schema`, so Alembic and tests see them).
- `scheduler.timing`: cron, interval and one-off times, and the ticks they make.
- `scheduler.store`: every query over the schedule tables.
- `scheduler.service`: what operators do (add, update, enable, run now, seed), validated.
- `scheduler.beat`: `DatabaseScheduler`, the beat scheduler class; `scheduler.lock`: its
  leader lock in Redis.
- `scheduler.cli`: `conveyor schedule ...` and `conveyor beat`.

Importing this package imports nothing heavy: the parts are imported where they are used.
"""
