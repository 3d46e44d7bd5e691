"""Errors the stages raise to operators through the control socket."""

from __future__ import annotations


class OperatorError(Exception):
    """An operator's request that cannot be done as asked (shown to them as is)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
