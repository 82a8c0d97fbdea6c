"""Flower on Conveyor's app: its command line and environment built from `Settings`.

Flower opens its dashboard and API to anyone who can reach the port unless it is given
credentials, and a dashboard of Conveyor shows every job's arguments and results, and can
revoke jobs and shut workers down. So Conveyor never starts it open: with no credentials
configured, `flower_command` refuses, unless the caller asks for `insecure_local` and Flower
is bound to the loopback interface.

Secrets travel in the child's environment (Flower reads `FLOWER_<OPTION>` variables), never on
its command line, where `ps` would show them to every user of the machine. Flower variables
inherited from the caller's environment are dropped, and Flower's config file is disabled, so
what runs is exactly what the settings say.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config import Settings
from jobs.errors import InvalidInput

#: Flower options whose `FLOWER_*` variables we drop from an inherited environment.
FLOWER_OPTION_VARS = (
    "ADDRESS", "AUTH", "AUTH_PROVIDER", "BASIC_AUTH", "CONF", "COOKIE_SECRET", "DB", "MAX_TASKS",
    "OAUTH2_KEY", "OAUTH2_REDIRECT_URI", "OAUTH2_SECRET", "PERSISTENT", "PORT",
    "PURGE_OFFLINE_WORKERS", "STATE_SAVE_INTERVAL", "UNAUTHENTICATED_API", "URL_PREFIX",
)
#: Command-line options that give Flower credentials of their own.
AUTH_ARGS = ("--auth", "--basic_auth", "--basic-auth")


class FlowerAuthRequired(InvalidInput):
    """Flower would start without authentication."""


@dataclass(frozen=True)
class FlowerCommand:
    """How to run Flower: argv and environment for the child, and where it will answer."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)
    url: str
    health_url: str
    #: "basic", "oauth", "basic+oauth", "passed through" or "none"
    auth: str
    bind: tuple[str, int] = ("127.0.0.1", 5555)
    user: str | None = None
    #: Set when `generate_password` made the password for this run (shown once to the operator).
    generated_password: str | None = field(default=None, repr=False)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def normalise_prefix(prefix: str | None) -> str:
    """`/flower/` and `flower` are the same prefix to Flower: keep it bare."""
    return (prefix or "").strip().strip("/")


def _has_auth_arg(args: Sequence[str]) -> bool:
    return any(a == opt or a.startswith(opt + "=") for a in args for opt in AUTH_ARGS)


def _basic_credentials(settings: Settings) -> tuple[str, str] | None:
    user = settings.flower_user
    password = settings.flower_password.get_secret_value() if settings.flower_password else None
    if not user and not password:
        return None
    if not user or not password:
        raise InvalidInput("set both CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD, or neither")
    if ":" in user:
        raise InvalidInput("CONVEYOR_FLOWER_USER must not contain ':' (HTTP basic auth splits on it)")
    if "," in user or "," in password:
        raise InvalidInput("CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD must not contain ',' "
                           "(Flower splits its list of credentials on commas)")
    return user, password


def _oauth_configured(settings: Settings) -> bool:
    if not settings.flower_auth:
        return False
    if not settings.flower_oauth2_key or not settings.flower_oauth2_secret:
        raise InvalidInput("CONVEYOR_FLOWER_AUTH needs CONVEYOR_FLOWER_OAUTH2_KEY and "
                           "CONVEYOR_FLOWER_OAUTH2_SECRET (the OAuth app's credentials)")
    return True


def _browse_host(address: str) -> str:
    """Where a browser on this machine reaches Flower bound to `address`."""
    if address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if address == "::":
        return "[::1]"
    return f"[{address}]" if ":" in address else address


def flower_command(
    settings: Settings,
    *,
    port: int | None = None,
    address: str | None = None,
    url_prefix: str | None = None,
    insecure_local: bool = False,
    generate_password: bool = False,
    extra_args: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
) -> FlowerCommand:
    """Flower's argv and environment for `settings`, or `FlowerAuthRequired` if it would be open.

    `generate_password`: with no credentials configured, make a random password for this run
    (user `conveyor`) instead of refusing; `conveyor up` uses it so a development stack is
    never open either. `extra_args` go to Flower as they are (its OAuth options, `--debug`...).
    """
    port = settings.flower_port if port is None else port
    address = settings.flower_address if address is None else address
    prefix = normalise_prefix(settings.flower_url_prefix if url_prefix is None else url_prefix)
    if not 0 < port < 65536:
        raise InvalidInput(f"Flower's port must be between 1 and 65535, not {port}")

    env = {k: v for k, v in (os.environ if base_env is None else base_env).items()
           if not (k.startswith("FLOWER_") and k[len("FLOWER_"):] in FLOWER_OPTION_VARS)}
    basic = _basic_credentials(settings)
    oauth = _oauth_configured(settings)
    generated = None
    if basic is None and not oauth and not _has_auth_arg(extra_args) and generate_password:
        generated = secrets.token_urlsafe(18)
        basic = ("conveyor", generated)

    kinds = [k for k, on in (("basic", basic), ("oauth", oauth)) if on]
    if kinds:
        auth = "+".join(kinds)
    elif _has_auth_arg(extra_args):
        auth = "passed through"
    elif not insecure_local:
        raise FlowerAuthRequired(
            "Flower will not start without authentication: set CONVEYOR_FLOWER_USER and "
            "CONVEYOR_FLOWER_PASSWORD (or Flower's OAuth: CONVEYOR_FLOWER_AUTH and "
            "CONVEYOR_FLOWER_OAUTH2_KEY/SECRET). For a look on this machine only, run it with "
            "--insecure-local, bound to 127.0.0.1."
        )
    elif not is_loopback(address):
        raise FlowerAuthRequired(
            f"--insecure-local binds Flower to the loopback interface only, not {address!r}: "
            "use --address 127.0.0.1, or configure credentials"
        )
    else:
        auth = "none"

    argv = [
        sys.executable, "-m", "celery", "-A", "worker.app", "flower",
        "--conf=" + os.devnull,  # no flowerconfig.py from the working directory
        f"--port={port}",
        f"--address={address}",
        f"--max_tasks={settings.flower_max_tasks}",
    ]
    if settings.flower_persistent:
        db = Path(settings.flower_db).expanduser().resolve()
        argv += ["--persistent=True", f"--db={db}",
                 f"--state_save_interval={int(settings.flower_state_save_interval * 1000)}"]
    if settings.flower_purge_offline_workers:
        argv.append(f"--purge_offline_workers={settings.flower_purge_offline_workers}")
    if prefix:
        argv.append(f"--url_prefix={prefix}")
    if basic:
        env["FLOWER_BASIC_AUTH"] = f"{basic[0]}:{basic[1]}"
    if oauth:
        argv.append(f"--auth={settings.flower_auth}")
        argv.append(f"--oauth2_key={settings.flower_oauth2_key}")
        if settings.flower_auth_provider:
            argv.append(f"--auth_provider={settings.flower_auth_provider}")
        if settings.flower_oauth2_redirect_uri:
            argv.append(f"--oauth2_redirect_uri={settings.flower_oauth2_redirect_uri}")
        assert settings.flower_oauth2_secret is not None
        env["FLOWER_OAUTH2_SECRET"] = settings.flower_oauth2_secret.get_secret_value()
    if settings.flower_cookie_secret:
        env["FLOWER_COOKIE_SECRET"] = settings.flower_cookie_secret.get_secret_value()
    argv += list(extra_args)

    base = f"http://{_browse_host(address)}:{port}/" + (f"{prefix}/" if prefix else "")
    return FlowerCommand(argv=argv, env=env, url=base, health_url=base + "healthcheck", auth=auth,
                         bind=(address, port), user=basic[0] if basic else None,
                         generated_password=generated)


def prepare(settings: Settings, cmd: FlowerCommand) -> None:
    """Check Flower's port is free (a clear message now beats a traceback from Flower) and
    create the directory of its state file (Flower does not)."""
    address, port = cmd.bind
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise InvalidInput(f"Flower cannot listen on {address or '*'}:{port}: {exc.strerror}; "
                               "choose another port (--port, CONVEYOR_FLOWER_PORT)") from None
    if settings.flower_persistent:
        Path(settings.flower_db).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def describe(cmd: FlowerCommand) -> str:
    """One line for the operator: where Flower answers and how it is protected."""
    if cmd.auth == "none":
        how = "NO AUTHENTICATION (--insecure-local: reachable from this machine only)"
    elif cmd.generated_password:
        how = f"basic auth: user {cmd.user}, password {cmd.generated_password} (generated for this run)"
    elif cmd.user:
        how = f"{cmd.auth} auth, user {cmd.user}"
    else:
        how = f"{cmd.auth} auth"
    return f"Flower: {cmd.url}  ({how})"
