"""Tasks an application might define, loaded by test workers through CONVEYOR_TASK_MODULES."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.registry import job


class Charge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account: str
    api_token: str
    fail: bool = False


@job("testing.charge", input=Charge, sensitive=["api_token"], max_retries=0)
def charge(task: Any, data: Charge) -> dict[str, Any]:
    """Pretend to charge an account; returns the last characters of the token it was given."""
    if data.fail:
        raise ValueError("card declined")
    return {"account": data.account, "token_tail": data.api_token[-4:]}


class Once(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 0


@job("testing.not_repeatable", input=Once, safe_to_repeat=False)
def not_repeatable(task: Any, data: Once) -> int:
    """A job that must never run twice."""
    return data.n


class Size(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chars: int


@job("testing.large_result", input=Size)
def large_result(task: Any, data: Size) -> str:
    """A result of `chars` characters."""
    return "x" * data.chars


class Nul(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail: bool = False


@job("testing.nul", input=Nul, max_retries=0)
def nul(task: Any, data: Nul) -> str:
    """A result, or an error, with a NUL character in it (PostgreSQL can store neither)."""
    task.progress(1, 2, "half\x00way")
    if data.fail:
        raise ValueError("bad\x00byte")
    return "a\x00b"
