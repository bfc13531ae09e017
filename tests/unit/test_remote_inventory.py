"""The remote-hosts inventory: a good file parses; every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctdblab.cluster.inventory import InventoryError, expand_command, load_inventory, parse_inventory
from ctdblab.errors import UserError

GOOD = """
[cluster]
shared_dir = "/clusterfs/lab/"

[ssh]
identity_file = "~/.ssh/lab"
command_timeout = 20

[power]
off_command = ["ipmitool", "-H", "{bmc}", "chassis", "power", "off"]
on = "command"
on_command = ["ipmitool", "-H", "{bmc}", "chassis", "power", "on"]

[[host]]
name = "blade1"
ssh = "root@blade1"
private_address = "198.18.0.1"
public_interface = "eth1"
public_address = "198.19.0.1/20"
public_ips = ["198.19.8.1", "198.19.8.2"]
vars = { bmc = "blade1-bmc" }

[[host]]
name = "blade2"
ssh = "root@blade2"
private_address = "198.18.0.2"
public_interface = "eth1"
public_address = "198.19.0.2/20"
public_ips = ["198.19.8.2", "198.19.8.3"]
vars = { bmc = "blade2-bmc" }

[[client]]
name = "client1"
ssh = "root@client1"
address = "198.19.4.1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    return path


def test_a_good_inventory(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert [h.name for h in inv.hosts] == ["blade1", "blade2"]
    assert inv.shared_dir == "/clusterfs/lab"          # trailing slash dropped
    assert inv.install_dir == "/opt/ctdblab"
    assert inv.public_ips() == ["198.19.8.1", "198.19.8.2", "198.19.8.3"]
    assert inv.hosts[0].public_prefixlen == 20 and inv.hosts[0].own_public_ip == "198.19.0.1"
    assert inv.ssh.command_timeout == 20.0 and inv.ssh.strict_host_key_checking == "yes"
    assert inv.clients[0].python == "python3"
    assert expand_command(inv.power.on_command, inv.hosts[1]) == [
        "ipmitool", "-H", "blade2-bmc", "chassis", "power", "on"]


def replace(old: str, new: str, count: int = 1) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, count)


@pytest.mark.parametrize("text, key, words", [
    ("[[host]]\nname='x'\n", "cluster", "missing table"),
    (replace('[[host]]\nname = "blade1"', '[[host]]\nnom = "blade1"'), "host[0].nom", "unknown key"),
    (replace('ssh = "root@blade2"\n', ''), "host[1].ssh", "missing"),
    (replace('private_address = "198.18.0.2"', 'private_address = "198.18.0.1"'),
     "host[1].private_address", "198.18.0.1 is also host[0].private_address"),
    (replace('name = "blade2"', 'name = "blade1"'), "host[1].name", "also host[0]'s name"),
    (replace('"198.19.8.3"]', '"198.19.99.3"]'), "host[1].public_ips[1]", "outside 198.19.0.0/20"),
    (replace('"198.19.8.3"]', '"198.19.0.1"]'), "host[1].public_ips[1]", "host[0].public_address"),
    (replace('public_address = "198.19.0.1/20"', 'public_address = "198.19.0.1"'),
     "host[0].public_address", "prefix length"),
    (replace('private_address = "198.18.0.1"', 'private_address = "blade1"'),
     "host[0].private_address", "not an IPv4 address"),
    (replace('address = "198.19.4.1"', 'address = "198.18.0.2"'), "client[0].address",
     "also host[1].private_address"),
    (replace('on = "command"', 'on = "later"'), "power.on", "\"command\" or \"wait\""),
    (replace('on_command = ["ipmitool", "-H", "{bmc}", "chassis", "power", "on"]', ''),
     "power.on_command", "missing"),
    (replace('vars = { bmc = "blade2-bmc" }', ''), "power.off_command", "host[1] (blade2)"),
    (replace('[ssh]', '[ssh]\nstrict_host_key_checking = "no"'), "ssh.strict_host_key_checking",
     "never 'no'"),
    (replace('command_timeout = 20', 'command_timeout = -1'), "ssh.command_timeout", "positive"),
    (replace('shared_dir = "/clusterfs/lab/"', 'shared_dir = "clusterfs"'), "cluster.shared_dir",
     "absolute"),
])
def test_mistakes_name_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as e:
        load_inventory(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message, message
    assert isinstance(e.value, UserError)          # the CLI prints it as one line


def test_no_hosts(tmp_path):
    path = write(tmp_path, '[cluster]\nshared_dir = "/x"\n')
    with pytest.raises(InventoryError, match=r"no \[\[host\]\] entries"):
        load_inventory(path)


def test_toml_syntax_error_has_the_line(tmp_path):
    path = write(tmp_path, '[cluster]\nshared_dir = \n')
    with pytest.raises(InventoryError, match=r"inventory.toml: not valid TOML: .*line 2"):
        load_inventory(path)


def test_missing_file(tmp_path):
    with pytest.raises(InventoryError, match="cannot read inventory"):
        load_inventory(tmp_path / "nope.toml")


def test_hard_reset_needs_the_flag_and_a_way_back(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    with pytest.raises(InventoryError, match="--allow-hard-reset"):
        inv.power.check_hard_reset(False, "inv.toml")
    inv.power.check_hard_reset(True, "inv.toml")            # flag + on = "command": allowed
    no_way_back = parse_inventory({**_data(GOOD), "power": {}}, Path("inv.toml"))
    with pytest.raises(InventoryError, match=r"inv.toml: power.on: say how a reset host comes back"):
        no_way_back.power.check_hard_reset(True, "inv.toml")
    waiting = parse_inventory({**_data(GOOD), "power": {"on": "wait"}}, Path("inv.toml"))
    waiting.power.check_hard_reset(True, "inv.toml")
    assert waiting.power.off_command is None                 # sysrq-b


def _data(text: str) -> dict:
    import tomllib
    return tomllib.loads(text)
