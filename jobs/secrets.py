"""Sensitive payload fields, encrypted at rest in the job store (Fernet, key from settings).

The job record keeps a task's `sensitive` fields redacted (`***`) in `kwargs`, so they never show
in the CLI, logs or Flower; their real values are kept beside, encrypted, only so that a retry or
a recovery can publish the job again. Without a key nothing is kept, and such a job cannot be
replayed from its record.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from jobs.errors import ConveyorError


class SecretsUnavailable(ConveyorError):
    """The job's secrets cannot be read back (no key, or the wrong one)."""


class SecretBox:
    """Seals and opens dicts of secret values with the configured key(s)."""

    def __init__(self, keys: str | None) -> None:
        parts = [k.strip() for k in (keys or "").split(",") if k.strip()]
        try:
            self._fernet = MultiFernet([Fernet(k) for k in parts]) if parts else None
        except ValueError as exc:
            raise ConveyorError(f"CONVEYOR_ENCRYPTION_KEY is not a valid Fernet key: {exc}") from None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, values: dict[str, Any]) -> str | None:
        if not values or self._fernet is None:
            return None
        return self._fernet.encrypt(json.dumps(values).encode()).decode()

    def open(self, token: str | None) -> dict[str, Any]:
        if token is None:
            return {}
        if self._fernet is None:
            raise SecretsUnavailable("the job's secrets are encrypted; set CONVEYOR_ENCRYPTION_KEY to read them")
        try:
            return dict(json.loads(self._fernet.decrypt(token.encode())))
        except InvalidToken:
            raise SecretsUnavailable("the job's secrets do not open with CONVEYOR_ENCRYPTION_KEY") from None


def generate_key() -> str:
    return Fernet.generate_key().decode()
