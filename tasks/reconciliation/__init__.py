"""Reconciliation jobs: match a payments ledger against bank and processor statements.

Modules, one job each: `readers` and `camt053` (files in), `mapping`/`presets` (layouts),
`normalize` (text to exact values), `matching` (the rules, pure functions), `items` and
`report` (results out), `models`/`store` (tables), `run` (one run end to end), `task` (the
Celery task), `notify` (the chained mail), `cli` (`conveyor reconcile`, `conveyor recon`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from config import Settings
from tasks.reconciliation import (
    models,  # noqa: F401 - registers the tables
    task,  # noqa: F401 - registers the task
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "reconciliation"
SAMPLE_FILES = ("ledger.csv", "statement.csv", "statement.camt053.xml")


def demo_setup(settings: Settings) -> None:
    """Copy the sample month into `<data dir>/reconciliation/` for the task's example."""
    target = settings.data_dir / "reconciliation"
    target.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_FILES:
        source = SAMPLES / name
        if source.exists():
            shutil.copyfile(source, target / name)
    return None
