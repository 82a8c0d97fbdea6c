"""Diagnostic tasks: `system.ping` answers, `system.sleep` waits (and fails if asked to)."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.errors import PermanentError, RetryableError
from tasks.registry import job
from worker.base import ConveyorTask


class PingInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(default="pong", max_length=1000, description="echoed back")


@job("system.ping", input=PingInput, example={"message": "hello from the demo"})
def ping(task: ConveyorTask, data: PingInput) -> dict[str, Any]:
    """Answer with the message, the worker's host and pid: proof a worker runs jobs."""
    return {"message": data.message, "host": socket.gethostname(), "pid": os.getpid()}


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(default=1.0, ge=0, le=86_400, description="how long to sleep")
    fail: bool = Field(default=False, description="raise a retryable error after sleeping")
    permanent: bool = Field(default=False, description="with fail: fail at once, no retries")
    steps: int = Field(default=10, ge=1, le=10_000, description="progress updates while sleeping")
    crash: bool = Field(default=False, description="SIGKILL the worker process after sleeping (chaos tests)")


@job("system.sleep", input=SleepInput, example={"seconds": 1.5})
def sleep(task: ConveyorTask, data: SleepInput) -> dict[str, Any]:
    """Sleep for a while, reporting progress; fail on purpose when asked to."""
    step = data.seconds / data.steps
    for i in range(data.steps):
        if step:
            time.sleep(step)
        if data.seconds >= 0.5:
            task.progress(i + 1, data.steps, f"slept {step * (i + 1):.1f}s")
    if data.crash:
        os.kill(os.getpid(), signal.SIGKILL)
    if data.fail:
        if data.permanent:
            raise PermanentError("asked to fail permanently")
        raise RetryableError("asked to fail")
    return {"slept": data.seconds}
