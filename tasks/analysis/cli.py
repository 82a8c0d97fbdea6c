"""`conveyor analyze ...`."""

import click


@click.group()
def analyze() -> None:
    """Profile, aggregate and report on data sets."""
