"""`conveyor email ...`."""

import click


@click.group()
def email() -> None:
    """Send mail and look at the outbox."""
