"""Failover checkers compute each metric from the history alone."""

from ctdblab.scenarios.checkers import failover_metrics

CUT, KILLED, ON = 1000.0, 1000.02, 1010.0
VIP = "198.19.8.3"


def ev(t, kind, **f):
    return {"t": t, "kind": kind, **f}


def sample_events():
    return [
        ev(999.0, "capture", probe="ping", what="reply", target=VIP),          # before the cut
        ev(1000.01, "capture", probe="ping", what="reply", target=VIP),        # in flight: ignored
        ev(1000.40, "state", what="log", event="detect", dead_node=2, node=0),
        ev(1000.35, "state", what="node_state", subject=2, value="DISCONNECTED", node=0),
        ev(1000.45, "state", what="log", event="takeover", ip=VIP, node=1),
        ev(1000.47, "capture", probe="ping", what="reply", target=VIP),
        ev(1000.46, "capture", probe="tcp_hold", what="reset", target=f"{VIP}:445"),
        ev(1000.46, "capture", probe="tcp_hold", what="stopped", target=f"{VIP}:7777"),
        ev(1000.60, "op", process="smb-retry", type="ok", latency_s=0.1),
        ev(1000.30, "op", process="smb-retry", type="ok", latency_s=0.5),      # invoked before cut
        ev(1000.20, "op", role="survivor", type="ok", latency_s=0.15),
        ev(1003.00, "op", role="survivor", type="fail", latency_s=9.0, aborted=True),
        ev(1012.0, "state", what="node_state", subject=2, value="OK", node=0),
        ev(1013.0, "state", what="ip_owner", ip=VIP, value=2, node=0),
    ]


def test_metrics_from_events():
    m, notes = failover_metrics(sample_events(), t_cut=CUT, t_killed=KILLED, victim=2, vip=VIP,
                                t_power_on=ON, window_end=CUT + 60)
    assert m["detect_s"] == 0.4          # the log wins over the poll
    assert m["takeover_s"] == 0.45
    assert m["ping_s"] == 0.47           # the reply in flight during the kill is not counted
    assert m["reset_s"] == 0.46
    assert m["smb_resumed_s"] == 0.6     # the retry invoked before the cut does not count
    assert m["survivor_stall_s"] == 0.15  # aborted ops are skipped
    assert m["power_on_s"] == 10.0
    assert m["rejoin_s"] == 12.0 and m["failback_s"] == 13.0
    assert m["unregistered_reset_s"] is None
    assert any(n.startswith("unregistered_reset_s:") for n in notes)


def test_poll_is_the_fallback_for_detection():
    events = [e for e in sample_events() if e.get("event") != "detect"]
    m, _ = failover_metrics(events, t_cut=CUT, t_killed=KILLED, victim=2, vip=VIP,
                            t_power_on=None, window_end=CUT + 60)
    assert m["detect_s"] == 0.35
    assert m["rejoin_s"] is None and m["power_on_s"] is None
