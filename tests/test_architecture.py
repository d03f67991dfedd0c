"""ARCHITECTURE.md is the architecture: its module table matches the package, and
imports only flow the way its "may import" column says."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from exporter.demo import DemoApi
from tests.conftest import ROOT

PACKAGE = ROOT / "exporter"
DOCUMENT = (ROOT / "ARCHITECTURE.md").read_text()

THIRD_PARTY_HOMES = {
    "httpx": {"client", "transport"},
    "httpcore": {"client", "transport"},
    "prometheus_client": {"collector", "exposition", "wiring"},
    "apscheduler": {"wiring", "runtime"},
    "pydantic_settings": {"config"},
    "h11": {"httpserver"},
    "bcrypt": {"webconfig", "web"},
}


def table() -> dict[str, set[str] | None]:
    """module → what it may import (None: everything), from ARCHITECTURE.md."""
    rows: dict[str, set[str] | None] = {}
    for line in DOCUMENT.splitlines():
        match = re.match(r"\|\s*`([\w/]+)\.py`\s*\|[^|]*\|([^|]*)\|", line)
        if match:
            allowed = match.group(2).strip().replace("`", "")
            rows[_module_name(match.group(1))] = (
                None
                if allowed == "everything"
                else {name.strip() for name in allowed.split(",") if name.strip()}
            )
    return rows


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
                is_module = (PACKAGE / f"{alias.name}.py").exists() or (
                    PACKAGE / alias.name / "__init__.py"
                ).exists()
                names.add(f"exporter.{alias.name}" if is_module else "exporter")
    return names


def _module_name(relative: str) -> str:
    """`state/sqlite` → `state.sqlite`; a package's `state/__init__` → `state`."""
    return relative.removesuffix("/__init__").replace("/", ".")


def source(module: str) -> Path:
    """The file of a module named as the table names it."""
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    return path if path.exists() else PACKAGE / module.replace(".", "/") / "__init__.py"


MODULES = sorted(
    _module_name(str(p.relative_to(PACKAGE).with_suffix(""))) for p in PACKAGE.rglob("*.py")
)


def test_the_module_table_matches_the_package() -> None:
    assert set(table()) == set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_imports_flow_one_way(module: str) -> None:
    internal = set()
    for name in imports_of(source(module)):
        if name == "exporter":
            internal.add("__init__")
        elif name.startswith("exporter."):
            internal.add(name.removeprefix("exporter."))
    allowed = table()[module]
    if allowed is not None:
        assert internal <= allowed, f"{module} reaches {internal - allowed}"


def test_only_wiring_builds_the_parts() -> None:
    assert [m for m, allowed in table().items() if allowed is None] == ["wiring"]


@pytest.mark.parametrize("library", sorted(THIRD_PARTY_HOMES))
def test_libraries_stay_in_their_modules(library: str) -> None:
    users = {
        m
        for m in MODULES
        if any(n == library or n.startswith(f"{library}.") for n in imports_of(source(m)))
    }
    assert users <= THIRD_PARTY_HOMES[library]
    assert library in DOCUMENT.lower() or library.replace("_", "-") in DOCUMENT.lower()


def test_package_init_has_only_the_version() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    statements = [
        n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
    ]
    assert len(statements) == 1 and isinstance(statements[0], ast.Assign)


def test_broad_excepts_only_at_the_boundaries() -> None:
    broad = []
    for module in MODULES:
        for node in ast.walk(ast.parse((source(module)).read_text())):
            if isinstance(node, ast.ExceptHandler) and (
                node.type is None
                or (
                    isinstance(node.type, ast.Name)
                    and node.type.id in ("Exception", "BaseException")
                )
            ):
                broad.append(module)
    assert sorted(broad) == ["daemon", "errors", "files", "schedule", "watchdog", "web"]


def test_no_class_is_built_at_run_time_with_type() -> None:
    for module in MODULES:
        for node in ast.walk(ast.parse((source(module)).read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "type"
            ):
                assert len(node.args) == 1, f"{module} builds a class with type()"


@pytest.mark.parametrize(
    "module",
    [
        "models",
        "errors",
        "snapshot",
        "usage",
        "store",
        "collector",
        "ratelimit",
        "exposition",
        "statuspage",
        "curve",
        "chart",
    ],
)
def test_pure_modules_do_not_log(module: str) -> None:
    assert "logging" not in imports_of(source(module))


def test_every_module_says_its_job_in_one_line() -> None:
    for module in MODULES:
        docstring = ast.get_docstring(ast.parse((source(module)).read_text()))
        assert docstring, module
        assert len(docstring.splitlines()[0]) <= 100, module


def test_nothing_in_the_repository_reads_outside_it() -> None:
    """A fresh clone has no reference material beside it; only the CI-only agreement
    check may look for it."""
    outside = ("../" + "shared", '"' + 'shared"')
    allowed = {ROOT / "tests" / "test_spec_agreement.py", Path(__file__).resolve()}
    for path in [
        *ROOT.glob("exporter/*.py"),
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("testing/*.py"),
        *(ROOT / "benchmarks").rglob("*.py"),
        ROOT / "Makefile",
        ROOT / ".ci" / "run",
    ]:
        if path in allowed:
            continue
        text = path.read_text()
        assert not any(marker in text for marker in outside), path


def test_the_package_ships_no_test_scaffolding() -> None:
    """The fakes live in `testing/` and wrap the demo's public `respond`; nothing in the
    package exists for the tests alone, and the benchmarks import nothing from tests/."""
    demo = (PACKAGE / "demo.py").read_text()
    assert "def respond(" in demo and ".setter" not in demo
    assert list(inspect.signature(DemoApi).parameters) == ["accounts", "host", "port"]
    for path in (ROOT / "benchmarks").rglob("*.py"):
        assert not any(n == "tests" or n.startswith("tests.") for n in imports_of(path)), path
    fakes = ROOT / "testing" / "fakeapi.py"
    assert "respond" in imports_of_names(fakes) and "DemoHandler" not in fakes.read_text()


def imports_of_names(path: Path) -> set[str]:
    """The names a module imports from others (`from x import a, b`: a, b)."""
    return {
        alias.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
