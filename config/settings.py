"""The one `Settings` object, built from `CONVEYOR_*` environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set, with the default that suits a laptop."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where messages go and where every job is recorded.
    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = "redis://localhost:6379/1"
    database_url: str = "sqlite:///conveyor.db"
    # Seconds a message may stay unacknowledged before Redis hands it out again. It must
    # outlast the longest job plus the longest countdown a job may be given.
    visibility_timeout: int = Field(default=6 * 3600, ge=60)

    #: Modules of the application's own tasks, imported by every worker and client
    #: (comma-separated in the environment: CONVEYOR_TASK_MODULES=myapp.tasks,myapp.billing).
    task_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)

    data_dir: Path = Path("data")
    results_dir: Path = Path("results")
    timezone: str = "UTC"

    # Worker runtime.
    worker_concurrency: int = Field(default=2, ge=1)
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = Field(default=None, description="KiB")
    task_soft_time_limit: int | None = Field(default=None, ge=1)
    task_time_limit: int | None = Field(default=3600, ge=1)

    # Retry policy applied to every task unless the task overrides it.
    retry_max: int = Field(default=5, ge=0)
    retry_backoff: int = Field(default=2, ge=1, description="first delay in seconds")
    retry_backoff_max: int = Field(default=600, ge=1)

    # Job store.
    record_flush_interval: float = Field(default=0.1, gt=0, description="seconds")
    record_batch_size: int = Field(default=500, ge=1)
    cancel_poll_interval: float = Field(default=1.0, gt=0)
    job_retention_days: int = Field(default=30, ge=1)
    max_payload_bytes: int = Field(default=1_000_000, ge=1024)

    # Lost-worker recovery: each worker claims the messages it holds every `heartbeat` seconds
    # (the claim lives `node_ttl`); a message unacknowledged for `min_age` that no live worker
    # claims goes back to its queue. None of this shortens the visibility timeout.
    recovery_heartbeat_interval: float = Field(default=2.0, gt=0)
    recovery_node_ttl: float = Field(default=30.0, gt=0)
    recovery_sweep_interval: float = Field(default=10.0, gt=0)
    recovery_min_age: float = Field(default=30.0, gt=0)
    #: A worker with work waiting and a free slot that received nothing this long is stalled.
    stall_after: float = Field(default=60.0, gt=0)
    #: A job redelivered after a lost worker more often than this is quarantined as dead.
    max_redeliveries: int = Field(default=3, ge=1)

    # Delivery.
    #: Jobs due further out than this many seconds are held in the job store and published
    #: when due, instead of waiting in a worker as a Celery countdown (which Redis would hand
    #: out again once it outlasts the visibility timeout).
    hold_threshold: float = Field(default=300.0, ge=0)
    relay_interval: float = Field(default=1.0, gt=0, description="seconds between relay passes")
    #: How long a transactional job may wait for its commit hook before the relay publishes it.
    relay_grace: float = Field(default=5.0, ge=0)
    #: A job still `queued` this long after it was published, with no message left in Redis,
    #: is lost: `maintenance.recover_lost` re-publishes it (if safe to repeat) or marks it.
    lost_after: float = Field(default=600.0, gt=0)
    #: Fernet key(s), comma-separated (the first encrypts): sensitive payload fields are kept
    #: encrypted in the job store so retries and recovery can replay them.
    encryption_key: SecretStr | None = None
    #: Message signing (Celery's `auth` serializer): every process signs what it publishes with
    #: its key and accepts only messages signed by a certificate in the store. All three set = on.
    security_key: Path | None = None
    security_certificate: Path | None = None
    security_cert_store: str | None = Field(default=None, description="glob of trusted certificates")
    #: Redis Sentinel: the master's name when the broker/result URLs are sentinel:// URLs.
    redis_sentinel_master: str | None = None
    #: SIGTERM: running jobs get this long to finish, then the rest are requeued.
    shutdown_grace: float = Field(default=60.0, ge=0)

    # Task events are buffered and flushed this often (Flower still sees every event).
    event_flush_interval: float = Field(default=0.1, ge=0)

    # --- email family -------------------------------------------------------------------
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_timeout: float = 30.0
    mail_from: str = "Conveyor <conveyor@localhost>"
    templates_dir: Path | None = Field(default=None, description="extra mail templates; shipped ones always")
    email_rate_limit: float = Field(default=10.0, gt=0, description="messages per second, all workers")
    attachment_max_bytes: int = Field(default=10_000_000, ge=1)
    #: Verify the SMTP server's certificate (STARTTLS and implicit TLS); a private CA may be given.
    smtp_verify: bool = True
    smtp_ca_file: Path | None = None
    smtp_keepalive: float = Field(
        default=30.0, ge=0, description="seconds an idle connection is reused; 0: one per message")
    email_domain_rate_limit: float | None = Field(
        default=None, gt=0, description="messages per second per recipient domain")
    email_max_recipients: int = Field(default=100, ge=1, description="to + cc + bcc of one message")
    # --- end email family ---------------------------------------------------------------

    # --- analysis family ----------------------------------------------------------------
    analysis_memory_limit: str = "1GB"
    analysis_threads: int = Field(default=2, ge=1)
    analysis_max_result_rows: int = Field(default=1000, ge=1, description="rows kept with the job")
    #: DuckDB spills to disk (in this directory, or the system's temp dir) past the memory limit.
    analysis_spill: bool = True
    analysis_spill_dir: Path | None = None
    analysis_max_spill: str = Field(default="100GB", description="disk a query may spill to")
    #: The profile counts distinct values exactly up to this many per column, then estimates.
    analysis_exact_distinct_limit: int = Field(default=10_000, ge=0)
    #: Quantiles (median, p95, profile percentiles) are within this relative error.
    analysis_quantile_accuracy: float = Field(default=0.005, gt=0, lt=0.5)
    #: A data set of at least this many files is split: one subtask per file, then a merge.
    analysis_split_min_files: int = Field(default=2, ge=2)
    analysis_max_partitions: int = Field(default=256, ge=2, description="files are grouped beyond this")
    # --- end analysis family ------------------------------------------------------------

    # --- reconciliation family ----------------------------------------------------------
    recon_date_tolerance_days: int = Field(default=3, ge=0)
    recon_notify_threshold: int = Field(default=1, ge=0, description="discrepancies that trigger mail")
    recon_group_max_candidates: int = Field(
        default=12, ge=0, le=24, description="ledger lines searched for a grouped match without reference"
    )
    recon_fee_pattern: str = Field(default=r"(?i)\bfees?\b", description="regex marking ledger fee lines")
    recon_memory_limit: str = Field(default="1GB", description="DuckDB memory limit of one run")
    recon_threads: int = Field(default=2, ge=1, description="DuckDB threads of one run")
    # --- end reconciliation family ------------------------------------------------------

    # --- scheduler ----------------------------------------------------------------------
    beat_lock_ttl: float = Field(default=10.0, gt=0, description="seconds the leader lock lives")
    beat_sync_interval: float = Field(default=1.0, gt=0, description="seconds between schedule reloads")
    beat_max_interval: float = Field(default=1.0, gt=0, le=60, description="longest sleep between ticks")
    beat_lock_url: str | None = Field(default=None, description="Redis of the leader lock; the broker's if unset")
    beat_lock_key: str = "conveyor:beat:leader"
    #: A tick later than this is a missed tick (beat was down) and follows the schedule's
    #: catch-up policy; a tick less late (a slow loop, a leader hand-over) still fires.
    schedule_misfire_grace: float = Field(default=30.0, ge=1, description="seconds")
    schedule_history_days: int = Field(default=7, ge=1, description="days of firing records kept")
    schedule_failure_alert: int = Field(default=3, ge=1, description="failed runs in a row that flag a schedule")
    schedule_report_email: str = Field(default="reports@example.com", description="the daily report's recipient")
    # --- end scheduler ------------------------------------------------------------------

    # --- monitoring ---------------------------------------------------------------------
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_url_prefix: str = ""
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    flower_db: Path = Path("var/flower.db")
    flower_max_tasks: int = 10_000
    #: Keep Flower's task history across restarts (saved to flower_db on exit and every
    #: flower_state_save_interval seconds, so a crash loses at most that much).
    flower_persistent: bool = True
    flower_state_save_interval: float = Field(default=60.0, ge=0, description="seconds; 0: on exit only")
    flower_purge_offline_workers: int | None = Field(default=3600, ge=1, description="seconds")
    # Flower's OAuth login instead of (or with) basic auth: a regexp of allowed e-mails, and
    # the provider's handler (e.g. flower.views.auth.GithubLoginHandler) and app credentials.
    flower_auth: str | None = None
    flower_auth_provider: str | None = None
    flower_oauth2_key: str | None = None
    flower_oauth2_secret: SecretStr | None = None
    flower_oauth2_redirect_uri: str | None = None
    #: Keeps OAuth login sessions valid across Flower restarts (random per start if unset).
    flower_cookie_secret: SecretStr | None = None
    # `conveyor up`: how many worker processes (each with worker_concurrency children), how
    # long a part may take to answer, how long running jobs get to finish at shutdown.
    up_workers: int = Field(default=1, ge=1, le=32)
    up_start_timeout: float = Field(default=60.0, gt=0, description="seconds")
    up_shutdown_timeout: float = Field(default=300.0, gt=0, description="seconds")
    up_restart_backoff_max: float = Field(default=60.0, ge=1, description="seconds")
    # --- end monitoring -----------------------------------------------------------------

    @field_validator("task_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("data_dir", "results_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***`, safe to print or log (Sentinel lists too)."""
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
