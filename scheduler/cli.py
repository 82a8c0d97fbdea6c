"""`conveyor schedule ...` and `conveyor beat`."""

import click


@click.group()
def schedule() -> None:
    """Manage schedules kept in the database."""
