"""ringd: the selfplay -> training loop's daemon."""

__version__ = "0.1.0"
