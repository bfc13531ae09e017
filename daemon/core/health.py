"""This node's health from its monitor events, as a pure core: a monitor result in, whether the
node becomes (un)healthy and when to run the next monitor event out.

CTDB's rules: a failed monitor event makes the node UNHEALTHY at once, a successful one
HEALTHY; a timed-out one counts, and only MonitorTimeoutCount timeouts in a row make the node
unhealthy. A cancelled event (another event ran) is retried shortly. pyctdbd's pacing: right
after a change the next check comes within 5 s (or MonitorInterval if shorter), then the
interval doubles back up to MonitorInterval, so a node that just failed is re-checked soon.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

NOTICE = 25
CANCELLED_RETRY = 0.2        # s before a cancelled monitor event is tried again
SETTLE_INTERVAL = 5.0        # s, the longest wait right after a health change
MIN_WAIT = 0.1               # s


@dataclass(frozen=True)
class MonitorResult:
    ok: bool
    timed_out: bool = False
    cancelled: bool = False
    failure: str = ""        # the failing script's output, for the log


@dataclass(frozen=True)
class Verdict:
    healthy: bool | None                 # set the node (un)healthy; None: leave it
    wait: float                          # s until the next monitor event
    logs: tuple[tuple[int, str], ...] = ()


@dataclass
class Health:
    monitor_interval: float = 15.0       # s, MonitorInterval
    timeout_limit: int = 20              # MonitorTimeoutCount
    timeouts: int = 0
    interval: float = field(default=0.0)

    def __post_init__(self) -> None:
        if not self.interval:
            self.interval = self.monitor_interval

    def result(self, result: MonitorResult, healthy_now: bool) -> Verdict:
        if result.cancelled:
            return Verdict(None, CANCELLED_RETRY, ((logging.ERROR, "Monitoring event was cancelled"),))
        logs: list[tuple[int, str]] = []
        healthy: bool | None = None
        if result.timed_out:
            self.timeouts += 1
            logs.append((logging.ERROR, f"monitor event timed out ({self.timeouts} of {self.timeout_limit})"))
            if self.timeouts >= self.timeout_limit:
                healthy = False
        else:
            self.timeouts = 0
            healthy = result.ok
            if healthy and not healthy_now:
                logs += [(NOTICE, "monitor event OK - node re-enabled"), (NOTICE, "Node became HEALTHY")]
            elif not healthy and healthy_now:
                logs += [(NOTICE, "monitor event failed - disabling node"),
                         (NOTICE, f"Node became UNHEALTHY ({result.failure.strip()[:200]})")]
        if healthy is not None and healthy != healthy_now:
            self.interval = min(SETTLE_INTERVAL, self.monitor_interval)
        else:
            self.interval = min(self.interval * 2, self.monitor_interval)
            if healthy == healthy_now:
                healthy = None
        return Verdict(healthy, max(MIN_WAIT, self.interval), tuple(logs))
