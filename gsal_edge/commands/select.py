"""`gsal-edge select`: re-fuse stored score records offline and pick a batch with rationale."""

import typer


def select() -> None:
    """Select a batch from stored score records."""
    raise typer.Exit(code=2)
