"""Email jobs: templated mail over SMTP, sent exactly once, campaigns with a global rate limit.

Tasks (see docs/email.md): `email.send`, `email.campaign`, `email.release_due`, and the
internal `email.deliver`. Importing the package registers them and the outbox tables.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from tasks.email import models, tasks  # noqa: F401 - registers the tables and the tasks

if TYPE_CHECKING:
    from config import Settings


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def demo_setup(settings: Settings) -> Callable[[], None]:
    """For `make demo`: a local SMTP sink the demo worker sends to, instead of real mail.

    The worker starts after this and reads CONVEYOR_* variables, so they are set here (the
    configured port if it is free and unprivileged, else a free one; no TLS, no AUTH)."""
    from config import get_settings
    from tasks.email.sink import Sink

    host = "127.0.0.1"
    port = settings.smtp_port if settings.smtp_port >= 1024 and _port_free(host, settings.smtp_port) else 0
    sink = Sink(host=host, port=port).start()
    names = ("HOST", "PORT", "STARTTLS", "SSL", "USER", "PASSWORD")
    saved = {f"CONVEYOR_SMTP_{n}": os.environ.get(f"CONVEYOR_SMTP_{n}") for n in names}
    os.environ.update({"CONVEYOR_SMTP_HOST": host, "CONVEYOR_SMTP_PORT": str(sink.port),
                       "CONVEYOR_SMTP_STARTTLS": "false", "CONVEYOR_SMTP_SSL": "false",
                       "CONVEYOR_SMTP_USER": "", "CONVEYOR_SMTP_PASSWORD": ""})
    get_settings.cache_clear()
    print(f"email: an SMTP sink listens on {host}:{sink.port}; demo mail goes there, not out")

    def cleanup() -> None:
        sink.stop()
        print(f"email: the sink received {len(sink.messages)} messages: "
              + ", ".join(f"{m.subject!r} to {', '.join(m.rcpt_tos)}" for m in sink.messages[:6]))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()

    return cleanup
