"""`conveyor up`, `conveyor flower`, `conveyor stats`."""

import click


@click.command()
def up() -> None:
    """Run the whole stack: workers, beat and Flower."""


@click.command()
def flower() -> None:
    """Run Flower, authenticated, on Conveyor's app."""


@click.command()
def stats() -> None:
    """Per-task figures from the job store, queue depths, workers online."""
