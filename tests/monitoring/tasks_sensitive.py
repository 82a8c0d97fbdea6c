"""A task with a sensitive field, for the monitoring tests (loaded through CONVEYOR_TASK_MODULES).

Conveyor's own families may not have one yet; Flower must show this one's password as `***`,
whatever state the job is in.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from jobs.errors import RetryableError
from tasks.registry import job
from worker.base import ConveyorTask

SECRET = "hunter2-never-shown"


class LoginInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    password: str
    fail_first: bool = False


@job("monitoring_test.login", input=LoginInput, sensitive=("password",))
def login(task: ConveyorTask, data: LoginInput) -> dict[str, Any]:
    """Check the password arrived intact; fail the first attempt when asked to."""
    if data.fail_first and not task.request.retries:
        raise RetryableError("first attempt fails on purpose")
    return {"user": data.user, "password_ok": data.password == SECRET}
