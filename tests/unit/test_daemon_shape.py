"""The house rules of the daemon's shape, checked on its source (docs/architecture.md):

* no class over 500 lines;
* imports point down the layers and never go round in a circle;
* no module uses another module's private names (imported, or read off an object: a private
  attribute is used only in the module that defines it; `os._exit` is the standard library's
  way out of a forked child);
* no imports hidden inside functions (a dependency is visible at the top of its module).
"""

from __future__ import annotations

import ast
from pathlib import Path

DAEMON = Path(__file__).resolve().parents[2] / "daemon"
CLASS_LIMIT = 500

#: Which top-level parts of the daemon each part may import. Lower layers never import higher.
ALLOWED = {
    "log": set(),
    "spawn": set(),          # children started off the loop: a foundation, like log
    "native": set(),         # the C heartbeat pacer's loader: a foundation, standard library only
    "protocol": {"log"},
    "config": {"protocol", "log"},
    "events": {"log", "spawn"},
    "failover": {"log"},
    "core": {"protocol", "config", "log"},
    "net": {"protocol", "log", "native"},
    "store": {"protocol", "config", "log", "spawn"},
    "server": {"core", "net", "store", "protocol", "config", "events", "failover", "log", "spawn",
               "native"},
    "controls": {"server", "core", "net", "store", "protocol", "config", "events", "failover", "log"},
    "main": {"controls", "server", "core", "net", "store", "protocol", "config", "events", "failover",
             "log", "spawn"},
    "__init__": set(),
}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(DAEMON.rglob("*.py")):
        rel = path.relative_to(DAEMON).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def imports_of(name: str, tree: ast.Module, known: set[str]) -> list[tuple[str, ast.ImportFrom]]:
    """Daemon modules that `name` imports (relative imports; the daemon uses no other kind)."""
    is_package = (DAEMON / name.replace(".", "/") / "__init__.py").exists() or name == "__init__"
    package = name.split(".") if is_package else name.split(".")[:-1]
    if name == "__init__":
        package = []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}" if target else alias.name
                out.append((full if full in known else target, node))
    return out


def defined_names(tree: ast.Module) -> set[str]:
    """Functions, classes, and attributes assigned (`x.name = ...`) or declared in a class."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute):
                        names.add(sub.attr)
                    elif isinstance(sub, ast.Name):
                        names.add(sub.id)
    return names


def test_no_class_is_over_500_lines():
    big = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
           for name, tree in modules().items() for node in ast.walk(tree)
           if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LIMIT]
    assert big == []


def test_imports_point_down_the_layers():
    mods = modules()
    wrong = []
    for name, tree in mods.items():
        layer = name.split(".")[0]
        for target, node in imports_of(name, tree, set(mods)):
            other = target.split(".")[0] if target else "__init__"
            if other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{name} imports {target} (line {node.lineno})")
    assert wrong == []


def test_no_import_circles():
    mods = modules()
    edges = {name: {t for t, _ in imports_of(name, tree, set(mods)) if t in mods and t != name}
             for name, tree in mods.items()}
    circles = set()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module):]
            start = cycle.index(min(cycle))
            circles.add(" -> ".join(cycle[start:] + cycle[:start]))
            return
        if module in done:
            return
        for dep in sorted(edges.get(module, ())):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    assert sorted(circles) == []


def test_no_private_names_across_modules():
    mods = modules()
    found = []
    for name, tree in mods.items():
        for target, node in imports_of(name, tree, set(mods)):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and target != name:
                    found.append(f"{name} imports {alias.name} from {target}")
        own = defined_names(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr not in own
                    and ast.unparse(node) != "os._exit"):
                found.append(f"{name} line {node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_no_imports_inside_functions():
    hidden = []
    for name, tree in modules().items():
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{name}.{func.name} line {n.lineno}" for n in ast.walk(func)
                           if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert hidden == []


def test_the_check_sees_the_daemon():
    # A guard against a check that passes because it read nothing.
    mods = modules()
    assert {"server.daemon", "core.node", "controls.node", "protocol.internal"} <= set(mods)
    assert len(mods) > 60
