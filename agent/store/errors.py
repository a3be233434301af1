"""What the store and the fetch path tell their callers went wrong (messages meant for users)."""

from __future__ import annotations

from locality import errors


class CacheError(errors.LocalityError):
    """A cache failure with a message meant for users (``message``)."""


class FetchFailed(CacheError):
    """Permanent: 403/404, a bad or hostile key, a size mismatch, an origin that says no."""


class VerificationFailed(FetchFailed):
    """The bytes on disk do not match the source's size or the chunk digests recorded in-stream."""


class NoSpace(CacheError, errors.InsufficientStorage):
    """The quota or the disk is full and pinned models make room impossible."""


class Pinned(CacheError, errors.Conflict):
    """``remove`` of a pinned model without ``force``."""


class UnknownModel(CacheError, errors.NotFound):
    """No committed model with that id."""
