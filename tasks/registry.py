"""The registry job families plug into: a task is a function, an input model and a few options."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from worker.base import ConveyorTask

FAMILY_QUEUES = {
    "email": "email",
    "analysis": "analysis",
    "reconciliation": "reconciliation",
    "maintenance": "maintenance",
}
DEFAULT_QUEUE = "default"
QUEUES = (DEFAULT_QUEUE, *FAMILY_QUEUES.values())

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskSpec:
    """What Conveyor knows of a task before any worker runs it."""

    name: str
    fn: Callable[[ConveyorTask, Any], Any]
    input: type[BaseModel]
    queue: str
    description: str
    sensitive: frozenset[str] = frozenset()
    max_retries: int | None = None
    #: A job of this task may run again after it was lost without harm.
    safe_to_repeat: bool = True
    #: A payload that works out of the box (with the sample data); `make demo` runs it.
    example: dict[str, Any] | None = None
    #: A `worker.ratelimit` limit shared by all workers (global, or per key of the payload).
    rate_limit: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    def redact(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`payload` with the task's sensitive fields replaced, for records, logs and Flower."""
        return redact(payload, self.sensitive)


def redact(payload: dict[str, Any], sensitive: Iterable[str]) -> dict[str, Any]:
    keys = set(sensitive)
    if not keys:
        return payload
    return {k: ("***" if k in keys and v is not None else v) for k, v in payload.items()}


REGISTRY: dict[str, TaskSpec] = {}


def family_queue(name: str) -> str:
    return FAMILY_QUEUES.get(name.split(".", 1)[0], DEFAULT_QUEUE)


def job(
    name: str,
    *,
    input: type[BaseModel],
    queue: str | None = None,
    sensitive: Iterable[str] = (),
    max_retries: int | None = None,
    safe_to_repeat: bool = True,
    example: dict[str, Any] | None = None,
    rate_limit: Any = None,
    **options: Any,
) -> Callable[[F], F]:
    """Register `fn(task, data)` as the task `name`, taking `input` as its payload.

    The function receives the running `ConveyorTask` (for `progress()`, `settings`, ...) and
    the validated input model, and returns something JSON can hold.
    """

    def register(fn: F) -> F:
        if name in REGISTRY and REGISTRY[name].fn is not fn:
            raise ValueError(f"task {name!r} is registered twice")
        REGISTRY[name] = TaskSpec(
            name=name,
            fn=fn,
            input=input,
            queue=queue or family_queue(name),
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
            sensitive=frozenset(sensitive),
            max_retries=max_retries,
            safe_to_repeat=safe_to_repeat,
            example=example,
            rate_limit=rate_limit,
            options=options,
        )
        return fn

    return register


def input_fields(spec: TaskSpec) -> list[dict[str, Any]]:
    """The input model's fields as rows: name, type, required, default, description."""
    rows = []
    for fname, f in spec.input.model_fields.items():
        ann = f.annotation
        tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append(
            {
                "name": fname,
                "type": tname,
                "required": f.is_required(),
                "default": None if f.is_required() else f.get_default(call_default_factory=True),
                "description": f.description or "",
            }
        )
    return rows
