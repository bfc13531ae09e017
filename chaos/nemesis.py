"""Faults as nemesis objects, and the one recorder every fault goes through.

A fault is an object that says what it will do (``name``, ``node``, ``params``) and does it
(``apply(cluster) -> Outcome``).  ``Nemesis.inject(fault)`` is the only way a fault reaches a
cluster, and it always records it in the run's history (Jepsen: faults are ordinary timestamped
operations):

    fault begin   (params)          before anything is done
    fault step    (step, t)         instants inside the fault a checker needs (events.FAULT_STEPS),
                                    e.g. power_off's cut and killed
    fault end     (outcome fields)  after it is done
    fault fail    (error)           instead of end when it raised; the exception propagates

A history is required: a fault that nobody recorded cannot be checked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ctdblab import events
from ctdblab.cluster.lab import LabCluster
from ctdblab.history import History


@dataclass
class Outcome:
    """What applying a fault did."""

    value: Any = None                                           # returned by Nemesis.inject
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step name, epoch time)
    fields: dict[str, Any] = field(default_factory=dict)        # recorded with the end event


class Fault(ABC):
    """One fault; subclasses set ``name`` (one of events.FAULTS) and ``node`` (a PNN or None)."""

    name: ClassVar[str]
    node: int | None      # subclasses declare it (as a dataclass field)

    def params(self) -> dict[str, Any]:
        """Recorded with the begin event."""
        return {}

    @abstractmethod
    def apply(self, cluster: LabCluster) -> Outcome:
        ...


class Nemesis:
    """Injects faults into one cluster, recording each one in ``history``."""

    def __init__(self, cluster: LabCluster, history: History):
        if not isinstance(history, History):
            raise TypeError("a Nemesis needs the run's History: every fault is recorded")
        self.cluster = cluster
        self.history = history

    def inject(self, fault: Fault, **tags: Any) -> Any:
        """Apply ``fault``; ``tags`` (e.g. the soak's ``soak_index``) go on every event it
        records, so a checker can group the events of one scheduled fault."""
        record = self.history.record
        record(events.fault_begin(fault.name, fault.node, **fault.params(), **tags))
        try:
            outcome = fault.apply(self.cluster)
        except BaseException as e:
            record(events.fault_fail(fault.name, fault.node, error=_describe(e), **tags))
            raise
        for step, t in outcome.steps:
            record(events.fault_step(fault.name, fault.node, step, t=t, **tags))
        record(events.fault_end(fault.name, fault.node, **outcome.fields, **tags))
        return outcome.value


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
