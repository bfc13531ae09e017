"""Faults for the lab, as nemesis objects; ``Nemesis(cluster, history).inject(fault)`` applies
one and records it in the run's history (begin, steps, end or fail)."""

from .nemesis import Fault, Nemesis, Outcome
from .network import ClearLoss, Flap, Heal, Loss, Partition
from .power import PowerOff, PowerOn
from .processes import Crash, Freeze, KillSmbd, Restart, Thaw, daemon_processes, program_name

__all__ = ["ClearLoss", "Crash", "Fault", "Flap", "Freeze", "Heal", "KillSmbd", "Loss", "Nemesis",
           "Outcome", "Partition", "PowerOff", "PowerOn", "Restart", "Thaw", "daemon_processes",
           "program_name"]
