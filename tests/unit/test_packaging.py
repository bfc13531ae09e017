"""Every source folder with an __init__.py is a package that pyproject.toml installs."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for folder, package in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found - listed == set(), "add these packages to pyproject.toml"


def test_daemon_does_not_import_lab_libraries():
    # pyctdbd deploys alone: no Mininet, matplotlib or smbprotocol in daemon/.
    for path in (ROOT / "daemon").rglob("*.py"):
        text = path.read_text()
        for banned in ("import mininet", "from mininet", "matplotlib", "smbprotocol", "ctdblab.cluster",
                       "ctdblab.scenarios", "ctdblab.chaos", "ctdblab.reports"):
            assert banned not in text, f"{path} uses {banned}"
