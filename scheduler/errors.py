"""The scheduler's errors, placed in Conveyor's one error tree."""

from __future__ import annotations

from jobs.errors import ConveyorError, InvalidInput


class InvalidSchedule(InvalidInput):
    """The schedule is invalid (timing, name, queue or policy)."""


class ScheduleExists(InvalidInput):
    """A schedule with that name exists already."""


class ScheduleNotFound(ConveyorError, LookupError):
    """No schedule has that name."""
