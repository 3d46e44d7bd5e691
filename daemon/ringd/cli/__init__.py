"""`ringd`: the command line and what it shows (tables, progress, the demo)."""

from ringd.cli.main import main

__all__ = ["main"]
