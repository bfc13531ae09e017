"""cluster/snapshots.py and the snapview probe's parsers: the [snap] share's configuration, lab
snapshots (names, copies, never reused), SRV_SNAPSHOT_ARRAY and smbclient allinfo parsing."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import pytest

from ctdblab.cluster.samba import smb_conf
from ctdblab.cluster.snapshots import (SnapshotError, SnapshotLayout, parse_name,
                                       snapshot_name, take_snapshot)
from ctdblab.scenarios.snapshot_views import ClientView, ProbeError
from ctdblab.scenarios.probes.snapview import (parse_allinfo_snapshots, parse_snapshot_array,
                                               token_time)


def section(conf: str, name: str) -> dict[str, str]:
    lines = conf.split(f"[{name}]\n", 1)[1].split("\n[", 1)[0].splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if "=" in line)


def test_snap_share_stacks_shadow_copy2_over_offline_on_the_shared_directory(tmp_path):
    layout = SnapshotLayout(tmp_path / "shared")
    conf = smb_conf(tmp_path / "shared" / "share", clustered=True, snapshots=layout)
    snap = section(conf, "snap")
    assert snap["path"] == str(tmp_path / "shared" / "snap")
    assert snap["vfs objects"] == "shadow_copy2 offline"
    assert snap["shadow:snapdir"] == str(tmp_path / "shared" / ".snapshots")
    assert snap["shadow:basedir"] == snap["path"]
    assert snap["shadow:format"] == "@GMT-%Y.%m.%d-%H.%M.%S"
    assert snap["shadow:localtime"] == "no"
    assert "vfs objects" not in section(conf, "share")
    assert "[snap]" not in smb_conf(tmp_path / "shared" / "share", clustered=True)


def test_snapshot_is_a_copy_named_in_utc_and_names_are_never_reused(tmp_path):
    layout = SnapshotLayout(tmp_path)
    layout.create()
    live = layout.share_dir / "f.txt"
    live.write_text("one")
    (layout.share_dir / "sub").mkdir()
    (layout.share_dir / "sub" / "g.txt").write_text("deep")
    first = take_snapshot(layout)
    with open(live, "r+") as f:      # in place: a hard-linked snapshot would change too
        f.truncate(0)
        f.write("two")
    second = take_snapshot(layout)
    assert parse_name(second) > parse_name(first)
    assert layout.snapshots() == [second, first]
    assert (layout.snapdir / first / "f.txt").read_text() == "one"
    assert (layout.snapdir / second / "f.txt").read_text() == "two"
    assert (layout.snapdir / first / "sub" / "g.txt").read_text() == "deep"
    assert not [p for p in layout.snapdir.iterdir() if p.name.startswith(".partial")]


def test_snapshot_at_a_given_time_and_its_errors(tmp_path):
    layout = SnapshotLayout(tmp_path)
    with pytest.raises(SnapshotError, match="does not exist"):
        take_snapshot(layout)
    layout.create()
    when = datetime(2026, 12, 5, 3, 4, 5, tzinfo=timezone.utc)
    assert take_snapshot(layout, when) == "@GMT-2026.12.05-03.04.05"
    with pytest.raises(SnapshotError, match="exists already"):
        take_snapshot(layout, when)
    (layout.snapdir / "not-a-snapshot").mkdir()
    assert layout.snapshots() == ["@GMT-2026.12.05-03.04.05"]


def test_names_and_tokens_round_trip():
    when = datetime(2026, 1, 2, 23, 59, 58, tzinfo=timezone.utc)
    assert snapshot_name(when) == "@GMT-2026.01.02-23.59.58"
    assert parse_name(snapshot_name(when)) == when == token_time(snapshot_name(when))
    assert parse_name("@GMT-2026.13.02-00.00.00") is None


def snapshot_array(names: list[str], returned: int | None = None) -> bytes:
    body = "".join(n + "\0" for n in names).encode("utf-16-le") + b"\0\0"
    n = len(names) if returned is None else returned
    return struct.pack("<III", len(names), n, len(body)) + body


def test_parse_snapshot_array():
    names = ["@GMT-2026.12.05-03.50.01", "@GMT-2026.12.05-03.50.00"]
    assert parse_snapshot_array(snapshot_array(names)) == names
    assert parse_snapshot_array(snapshot_array([])) == []
    assert parse_snapshot_array(struct.pack("<III", 0, 0, 0)) == []
    with pytest.raises(ValueError, match="says 3"):
        parse_snapshot_array(snapshot_array(names, returned=3))
    with pytest.raises(ValueError, match="at least 12"):
        parse_snapshot_array(b"\0" * 8)


def test_parse_allinfo_snapshots():
    text = """altname: REPORT~1.TXT
create_time:    Sat Dec  5 03:56:54 AM 2026 UTC
attributes: (1000)
@GMT-2026.12.05-03.56.55
create_time:    Sat Dec  5 03:56:55 AM 2026 UTC
size: 51
@GMT-2026.12.05-03.56.54
size: 37
"""
    assert parse_allinfo_snapshots(text) == ["@GMT-2026.12.05-03.56.55", "@GMT-2026.12.05-03.56.54"]


def test_client_view_from_probe_output():
    data = {"ip": "198.18.0.1", "snapshots": [], "allinfo_snapshots": [],
            "smbclient_versions": {}, "attributes": 0x1000,
            "listed_attributes": 0x1000, "content": "x", "versions": {}}
    view = ClientView.from_json(data)
    assert view.offline and "ip" not in view.comparable()
    with pytest.raises(ProbeError, match="lacks versions"):
        ClientView.from_json({k: v for k, v in data.items() if k != "versions"})


def test_cli_snapshot_of_a_running_cluster(tmp_path, monkeypatch, capsys):
    from ctdblab import cli
    from ctdblab.cluster import registry

    monkeypatch.setattr(registry, "running_clusters",
                        lambda: [{"prefix": "cx9", "workdir": str(tmp_path)}])
    assert cli.main(["-q", "snapshot"]) == 2
    assert "snapshot of cluster cx9" in capsys.readouterr().err
    layout = SnapshotLayout(tmp_path / "shared")
    layout.create()
    (layout.share_dir / "a.txt").write_text("a")
    assert cli.main(["-q", "snapshot", "--cluster", "cx9"]) == 0
    [name] = layout.snapshots()
    assert (layout.snapdir / name / "a.txt").read_text() == "a"
    assert capsys.readouterr().out.startswith(f"{name}: a copy of {layout.share_dir}")
    assert cli.main(["-q", "snapshot", "--list"]) == 0
    assert capsys.readouterr().out == f"  {name}\n"
    assert cli.main(["-q", "snapshot", "--cluster", "cx8"]) == 2
