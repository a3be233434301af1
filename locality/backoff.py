"""The one back-off formula every retry loop of ours uses (watches, node writes, chunk GETs, refetches).

Pure: the caller passes the random draw ``r`` (``r=1.0`` for no jitter), so tests are exact.
"""

from __future__ import annotations


def backoff_delay(attempt: int, base: float, cap: float, r: float = 1.0) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...), with "equal jitter":

    ceiling = min(cap, base * 2 ** (attempt - 1)); delay = ceiling / 2 + r * ceiling / 2, r in [0, 1].
    With ``r = 1`` the delay is the ceiling itself.
    """
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return ceiling / 2.0 + r * ceiling / 2.0
