"""Sizes people read: ``human_size`` (binary units), shared by every CLI and log message."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int | float | None) -> str:
    """``1536`` -> ``1.5 KiB``; ``91_000_000`` -> ``86.8 MiB``; bytes below 1 KiB as ``512 B``."""
    if n is None:
        return "?"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
