"""Client-side probes of the failover scenario.

Each probe is a standalone program, ``python -m ctdblab.scenarios.probes.<name> ARGS``, started
*before* the fault (imports done, sessions open).  It writes one JSON object per line to stdout,
flushed at once, built by ``ctdblab.events`` (``t`` = ``time.time()``, ``kind``),
and exits cleanly on SIGTERM or SIGINT.  The orchestrator collects the lines into the run's history.

=============  ====================================================================================
``ping``       ``ping -D -i 0.02`` replies as ``capture`` events (``what``: start|reply|unreachable|stop)
``tcp_hold``   TCP connections blocked in ``recv()``; one final reset|eof|timeout|error|stopped each
``tcp_listener`` (runs in nodes) accepts and holds connections, never answers
``smb_hold``   an open SMB file read every 0.2 s until the session breaks (``closed``)
``smb_retry``  on a trigger, K staggered connect+read loops: first good SMB op through a moved IP
``smb_stall``  open+read+close every 0.1 s through a survivor's IP: the cluster-wide stall
=============  ====================================================================================
"""
