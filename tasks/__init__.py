"""Job families. Each module registers its tasks with `tasks.registry.job`."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from tasks.registry import REGISTRY, TaskSpec, job

#: Modules whose tasks every Conveyor app registers.
TASK_MODULES = [
    "tasks.system",
    "tasks.maintenance",
    "tasks.email",
    "tasks.analysis",
    "tasks.reconciliation",
]


def load_all(extra: Iterable[str] = ()) -> dict[str, TaskSpec]:
    """Import every family (and the application's own task modules) and return the registry."""
    for module in (*TASK_MODULES, *extra):
        importlib.import_module(module)
    return REGISTRY


__all__ = ["REGISTRY", "TASK_MODULES", "TaskSpec", "job", "load_all"]
