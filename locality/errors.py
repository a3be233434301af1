"""Domain errors shared by every service: what went wrong, with no HTTP in it.

The HTTP kit maps each class to a status code (``httpkit.STATUS_OF``); cores and services raise
these and never an HTTP error. ``message`` is safe to show a client: it never carries a secret.
"""

from __future__ import annotations


class LocalityError(Exception):
    """Base of our domain errors; ``message`` is one line a user can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(LocalityError):
    """The caller's input cannot be used (bad JSON, unknown field, a URI that does not normalise)."""


class Unauthenticated(LocalityError):
    """No credentials, or credentials that do not prove who the caller is."""


class Forbidden(LocalityError):
    """The caller is known but not allowed to do this."""


class NotFound(LocalityError):
    """The named thing does not exist."""


class Conflict(LocalityError):
    """The thing exists in a state that forbids the request (pinned, being removed, name taken)."""


class TooLarge(LocalityError):
    """A request body or field over its limit."""


class Unavailable(LocalityError):
    """A dependency or the service itself cannot answer now (shutting down, API server down)."""


class InsufficientStorage(LocalityError):
    """The cache cannot hold what was asked for."""


class Internal(LocalityError):
    """Our own failure; the message says what failed, the log has the rest."""
