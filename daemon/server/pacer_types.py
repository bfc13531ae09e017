"""What the heartbeat pacers (server/heartbeat_pacer.py, server/native_pacer.py) share: the
timing the loop hands them and what they use of the node transport (net/transport.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class FastChannel(Protocol):
    """What the pacer uses of the node transport (net/transport.py)."""

    @property
    def has_fast_channel(self) -> bool: ...
    def send_fast(self, pnn: int, frame: bytes) -> bool: ...
    def drain_fast(self, wall_to_loop: float) -> list[tuple[int, float]]: ...


class NativeChannel(FastChannel, Protocol):
    """What the native pacer uses: the socket itself, the peers' addresses, the counters."""

    port: int
    def fast_fileno(self) -> int | None: ...
    def fast_peers(self) -> dict[int, str]: ...
    def count_fast(self, sent: int, received: int, bad: int) -> None: ...


@dataclass(frozen=True)
class PacerTiming:
    interval: float          # s between beats
    phase: float             # the grid's offset on the loop clock (the detector's wall_offset)
    alarm_silence: float     # s of a watched peer's silence that wakes the loop
    liveness_limit: float    # s since the loop's last look after which no beat goes out
