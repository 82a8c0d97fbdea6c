"""Preparing a reconciliation job from what a person typed: checked before anything is published.

`prepare` turns file arguments into paths relative to the data directory (refusing anything
outside it), parses the mapping (a preset name, inline JSON or `@file.json`) and checks that
both files exist and have the columns the mapping needs. Deeper problems (a bad amount on
line 81,204) are found by the worker, which records the run as failed with the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import Settings
from tasks.reconciliation import readers
from tasks.reconciliation.errors import InputPathError, InvalidMapping
from tasks.reconciliation.inputs import ReconcileInput
from tasks.reconciliation.mapping import resolve

if TYPE_CHECKING:
    from jobs.client import Client, Job

TASK = "reconciliation.reconcile"


def data_relative(settings: Settings, value: str) -> str:
    """`value` as a path relative to the data directory. A path that exists as typed (or is
    absolute) must lie inside the data directory; anything else is taken relative to it."""
    base = settings.data_dir.resolve()
    typed = Path(value).expanduser()
    candidate = typed if typed.is_absolute() or typed.exists() else base / typed
    full = candidate.resolve()
    if not full.is_relative_to(base):
        raise InputPathError(f"{value} is outside the data directory {base} (CONVEYOR_DATA_DIR)")
    if not full.is_file():
        raise InputPathError(f"{value} does not exist in the data directory {base}")
    return str(full.relative_to(base))


def parse_mapping(value: str | None) -> str | dict[str, Any] | None:
    """A preset name, a JSON object, or `@path/to/mapping.json`."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("@"):
        try:
            text = Path(text[1:]).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidMapping(f"cannot read the mapping file {text[1:]}: {exc.strerror}") from None
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidMapping(f"the mapping is not valid JSON: {exc}") from None
        resolve(parsed)
        return dict(parsed)
    resolve(text)
    return text


def prepare(
    settings: Settings,
    ledger: str,
    statement: str,
    *,
    mapping: str | None = None,
    date_tolerance_days: int | None = None,
    amount_tolerance: str = "0",
    notify: list[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The checked payload of a `reconciliation.reconcile` job."""
    parsed = parse_mapping(mapping)
    payload: dict[str, Any] = {
        "ledger": data_relative(settings, ledger),
        "statement": data_relative(settings, statement),
        "mapping": parsed,
        "date_tolerance_days": date_tolerance_days,
        "amount_tolerance": amount_tolerance,
        "notify": list(notify) if notify else None,
        "force": force,
    }
    ReconcileInput.model_validate(payload)
    layout = resolve(parsed)
    base = settings.data_dir.resolve()
    readers.check_columns(base / payload["ledger"], layout.ledger, payload["ledger"])
    readers.check_columns(base / payload["statement"], layout.statement, payload["statement"])
    return payload


def submit(client: Client, ledger: str, statement: str, *, source: str = "api", **options: Any) -> Job:
    """Check and enqueue a reconciliation; `options` as for `prepare`. Raises `InvalidInput`
    (nothing published) for a bad path, mapping or missing column."""
    payload = prepare(client.settings, ledger, statement, **options)
    return client.enqueue(TASK, payload, source=source)
