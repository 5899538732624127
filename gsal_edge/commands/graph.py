"""`gsal-edge graph ...` commands."""

import typer

app = typer.Typer(help="graph commands", no_args_is_help=True)
