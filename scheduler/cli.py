"""`conveyor schedule ...` and `conveyor beat`."""

import click


@click.group()
def schedule() -> None:
    """Manage schedules kept in the database."""


@click.command()
def beat() -> None:
    """Run the beat scheduler on the schedules table."""
