"""Faults for the lab; each one is a timestamped event in the run's history."""

from .faults import (clear_loss, crash, daemon_processes, flap, freeze, heal, kill_smbd, loss,
                     partition, power_off, power_on, thaw)

__all__ = ["clear_loss", "crash", "daemon_processes", "flap", "freeze", "heal", "kill_smbd",
           "loss", "partition", "power_off", "power_on", "thaw"]
