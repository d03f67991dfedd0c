"""The package as users install it: sdist and wheel build, pass `twine check`, carry
py.typed and nothing of the repository's tests; metadata a registry can show."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from exporter import __version__
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--sdist",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def test_twine_check_passes(dist: Path) -> None:
    files = sorted(str(p) for p in dist.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_the_wheel_is_the_typed_package_and_nothing_else(dist: Path) -> None:
    (wheel,) = dist.glob(f"latitudesh_exporter-{__version__}-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "exporter/py.typed" in names
    assert {n.split("/")[0] for n in names} == {
        "exporter",
        f"latitudesh_exporter-{__version__}.dist-info",
    }
    metadata = (
        zipfile.ZipFile(wheel)
        .read(f"latitudesh_exporter-{__version__}.dist-info/METADATA")
        .decode()
    )
    assert "Typing :: Typed" in metadata
    assert metadata.count("Project-URL:") >= 3
    assert "Keywords:" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [line for line in requires if "extra ==" not in line]
    for tool in ("ruff", "mypy", "hadolint", "kubernetes-validate", "pytest"):
        assert not any(tool in line for line in runtime), tool
    assert any("ruff" in line and "extra == 'dev'" in line for line in requires)


def test_the_sdist_builds_the_package_without_the_test_suite(dist: Path) -> None:
    (sdist,) = dist.glob(f"latitudesh_exporter-{__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(n.endswith("exporter/cli.py") for n in names)
    assert not any("/tests/" in n or "/benchmarks/" in n or "/testing/" in n for n in names)


def test_make_run_installs_the_locked_runtime_set_only(tmp_path: Path) -> None:
    """`make run` is how a newcomer first meets the exporter: it installed the whole
    developer toolchain (a 595 MB venv of 85 packages, npm included) before showing a
    demo. What it would run, on a fresh checkout, is the runtime set alone."""
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    lock = tmp_path / "grafana" / "schema-check" / "package-lock.json"
    lock.parent.mkdir(parents=True)
    lock.write_text("{}")
    planned = subprocess.run(
        ["make", "-n", "run"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "--require-hashes -r requirements.lock" in planned
    assert "[test" not in planned and "dev]" not in planned and "npm" not in planned
    planned = subprocess.run(
        ["make", "-n", "dev"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "'.[test,dev]'" in planned and "npm ci" in planned
    # a benchmark run writes where git does not look, unless told otherwise
    planned = subprocess.run(
        ["make", "-n", "bench"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "--out benchmarks/out/RESULTS.md" in planned
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "benchmarks/out/RESULTS.md"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0


def test_a_real_token_in_deploy_env_is_never_committed() -> None:
    """The README tells compose users to put the key in deploy/.env."""
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "deploy/.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0
