"""The daemon's logger, CTDB's NOTICE level and the mapping from Samba debug levels.

Samba and CTDB log at ERROR(0) WARNING(1) NOTICE(2) INFO(3..5) DEBUG(6+)-like levels; Python
has no NOTICE, so it gets level 25 (between INFO and WARNING) and the name "NOTICE".
"""

from __future__ import annotations

import logging

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

log = logging.getLogger("ctdblab.daemon")


def notice(message: str, *args: object) -> None:
    log.log(NOTICE, message, *args)


def python_level(samba_level: int) -> int:
    """The Python logging level that shows what a Samba debug level shows."""
    if samba_level <= 0:
        return logging.ERROR
    if samba_level == 1:
        return logging.WARNING
    if samba_level <= 3:
        return NOTICE
    if samba_level <= 5:
        return logging.INFO
    return logging.DEBUG
