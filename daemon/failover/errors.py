"""Exceptions of the failover effects (addresses, announcements, tickles, resets)."""

from __future__ import annotations


class FailoverError(OSError):
    """A host effect of a takeover or release could not be carried out."""


class InterfaceNotFound(FailoverError):
    """The named network interface does not exist in this network namespace."""

    def __init__(self, iface: str, detail: str = "") -> None:
        self.iface = iface
        message = f"no network interface {iface!r} in this network namespace"
        super().__init__(message + (f" ({detail})" if detail else ""))
