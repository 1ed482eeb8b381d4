"""Numbers for people (shared by the CLI's summary and ``status``)."""

from __future__ import annotations


def human_size(octets: int) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units, whole bytes below one KiB."""
    size = float(octets)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
