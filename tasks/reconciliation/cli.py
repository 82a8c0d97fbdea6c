"""`conveyor reconcile ...` and `conveyor recon ...`."""

import click


@click.group()
def recon() -> None:
    """Look at reconciliation runs."""


@click.command()
def reconcile() -> None:
    """Reconcile a ledger against a statement."""
