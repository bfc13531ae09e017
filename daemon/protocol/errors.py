"""The one exception the wire codec raises for bytes it cannot accept."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Malformed, truncated or unsupported CTDB wire data.

    Every decode failure in :mod:`ctdblab.daemon.protocol` raises this (never
    ``IndexError``, ``struct.error`` or ``UnicodeDecodeError``), with a message that
    says what was wrong and at which offset, so the caller can log it and drop
    the packet or the connection.
    """
