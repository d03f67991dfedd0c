"""The module table of DESIGN.md is the architecture: imports only flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"

#: What each module may import from the package. cli.py alone wires everything.
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "__main__": {"cli"},
    "errors": set(),
    "config": set(),
    "models": set(),
    "ratelimit": {"errors"},
    "client": {"__init__", "errors", "models", "ratelimit"},
    "snapshot": {"errors", "models"},
    "poller": {"errors", "models", "snapshot"},
    "collector": {"__init__", "snapshot"},
    "server": {"__init__"},
    "demo": set(),
    "cli": {"__init__", "client", "collector", "config", "demo", "poller", "ratelimit",
            "server", "snapshot"},
}
THIRD_PARTY_HOMES = {
    "httpx": {"client", "demo"},
    "prometheus_client": {"collector", "server", "cli"},
    "apscheduler": {"poller"},
    "pydantic_settings": {"config"},
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module != "exporter":
                names.add(node.module)
                continue
            for alias in node.names:  # `from exporter import errors` names a module
                is_module = (PACKAGE / f"{alias.name}.py").exists()
                names.add(f"exporter.{alias.name}" if is_module else "exporter")
    return names


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_is_in_the_table() -> None:
    assert set(MODULES) == set(ALLOWED)


@pytest.mark.parametrize("module", MODULES)
def test_imports_flow_one_way(module: str) -> None:
    internal = set()
    for name in imports_of(PACKAGE / f"{module}.py"):
        if name == "exporter":
            internal.add("__init__")
        elif name.startswith("exporter."):
            internal.add(name.split(".")[1])
    assert internal <= ALLOWED[module], f"{module} reaches {internal - ALLOWED[module]}"


@pytest.mark.parametrize("library", sorted(THIRD_PARTY_HOMES))
def test_libraries_stay_in_their_modules(library: str) -> None:
    users = {m for m in MODULES
             if any(n == library or n.startswith(f"{library}.")
                    for n in imports_of(PACKAGE / f"{m}.py"))}
    assert users <= THIRD_PARTY_HOMES[library]


def test_package_init_has_only_the_version() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    statements = [n for n in tree.body if not (isinstance(n, ast.Expr)
                                               and isinstance(n.value, ast.Constant))]
    assert len(statements) == 1 and isinstance(statements[0], ast.Assign)


def test_broad_excepts_only_at_the_two_boundaries() -> None:
    broad = []
    for module in MODULES:
        for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
            if isinstance(node, ast.ExceptHandler) and (
                node.type is None or (isinstance(node.type, ast.Name)
                                      and node.type.id in ("Exception", "BaseException"))):
                broad.append(module)
    assert sorted(broad) == ["poller", "server"]


@pytest.mark.parametrize("module", ["models", "errors", "snapshot", "collector", "ratelimit"])
def test_pure_modules_do_not_log(module: str) -> None:
    assert "logging" not in imports_of(PACKAGE / f"{module}.py")
