"""Log lines that hostile or broken peers can trigger, kept to a trickle.

A peer that sends a bad message a thousand times a second must not make the daemon write a
thousand lines a second (the disk fills, `ctdb status` times out behind the logging). Each kind
of line may be written `burst` times per `window` seconds; what is held back is counted and said
in one line when the window ends and the next line of that kind comes ("... (37 more like this
in the last 10 s)").

Sans-I/O: the caller passes the time and writes what `allow` lets through.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Window:
    start: float
    written: int = 0
    held: int = 0


@dataclass
class LogLimiter:
    window: float = 10.0
    burst: int = 5
    _kinds: dict[str, _Window] = field(default_factory=dict)

    def allow(self, kind: str, text: str, now: float) -> str | None:
        """The line to write for `kind` now (with the count held back before it), or None."""
        w = self._kinds.get(kind)
        held = 0
        if w is None or now - w.start >= self.window:
            held = w.held if w is not None else 0
            w = self._kinds[kind] = _Window(now)
            if len(self._kinds) > 1000:       # kinds are a small fixed set; never grow unbounded
                self._kinds = {kind: w}
        if w.written >= self.burst:
            w.held += 1
            return None
        w.written += 1
        if held:
            return f"{text} ({held} more like this in the last {self.window:g} s)"
        return text

    def held_back(self, kind: str) -> int:
        w = self._kinds.get(kind)
        return w.held if w is not None else 0
