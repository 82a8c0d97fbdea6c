"""`conveyor reconcile ...` and `conveyor recon ...`."""

import click


@click.group()
def recon() -> None:
    """Look at reconciliation runs."""
