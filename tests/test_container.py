"""Build and run the real image with Podman (no Docker engine runs on these machines).

No registry is reachable, so the base image is built locally (debootstrap of Debian
bookworm with python3, imported into Podman and cached between runs) and pip installs
from a wheelhouse made on the host. Slow (about a minute the first time); skipped with
a reason where Podman can't run, failing under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import (
    ROOT,
    free_port,
    http_get,
    parse_samples,
    require_binary,
    sample,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE = "localhost/latitudesh-base:bookworm"
IMAGE = "localhost/latitudesh-exporter:test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


@dataclass
class Podman:
    env: dict[str, str]
    size: int

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], capture_output=True, text=True,
                                env=self.env, timeout=timeout, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


def host_debian_mirror() -> str | None:
    """The Debian archive this machine's apt already uses, so debootstrap fetches from
    the same place (`None` leaves debootstrap to its own default)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":  # deb822: paragraphs of "Field: value" lines
            for paragraph in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", paragraph, re.M))
                if "bookworm" in fields.get("Suites", "").split() and fields.get("URIs"):
                    return fields["URIs"].split()[0]
        elif path.suffix in ("", ".list"):  # one-line: deb [options] URI suite components
            for uri, suite in re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text,
                                         re.M):
                if suite == "bookworm":
                    return str(uri)
    return None


def build_base(podman: Podman, tmp: Path) -> None:
    rootfs = tmp / "rootfs"
    mirror = host_debian_mirror()
    subprocess.run(["debootstrap", "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates", "bookworm",
                    str(rootfs), *([mirror] if mirror else [])],
                   check=True, capture_output=True, timeout=900)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."],
                          stdout=subprocess.PIPE) as tar:
        imported = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout,
                                  capture_output=True, env=podman.env, timeout=600,
                                  check=False)
    assert tar.returncode == 0
    assert imported.returncode == 0, imported.stderr


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    for tool in ("podman", "runc", "debootstrap"):
        require_binary(tool)
    tmp = tmp_path_factory.mktemp("podman")
    (tmp / "containers.conf").write_text(CONTAINERS_CONF)
    tool = Podman({**os.environ, "CONTAINERS_CONF": str(tmp / "containers.conf")}, 0)
    if tool("image", "exists", BASE, check=False).returncode != 0:
        build_base(tool, tmp)
    context = tmp / "context"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir",
                    str(context / "wheelhouse"), str(ROOT), "hatchling"], check=True,
                   capture_output=True, timeout=600)
    tool("build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE}",
         "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "PIP_FIND_LINKS=/src/wheelhouse",
         "-t", IMAGE, str(context))
    tool.size = int(tool("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    yield tool
    tool("rm", "--force", "--all", check=False)
    tool("rmi", "--force", IMAGE, check=False)


@pytest.fixture(scope="module")
def container(podman: Podman) -> Iterator[tuple[str, str]]:
    port = free_port()
    name = f"latitudesh-test-{port}"
    podman("run", "--detach", "--name", name, "--read-only",
           "--publish", f"127.0.0.1:{port}:10067", IMAGE, "--demo")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return http_get(url + "/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=60, message="the container to be ready")
    except pytest.fail.Exception:
        print(podman("logs", name, check=False).stderr)
        raise
    yield name, url
    podman("rm", "--force", name, check=False)


def test_image_is_reasonably_small(podman: Podman) -> None:
    print(f"image size: {podman.size / 1e6:.0f} MB")
    assert podman.size < 400e6


def test_container_serves_demo_metrics(container: tuple[str, str]) -> None:
    _, url = container
    status, _, body = http_get(url + "/metrics")
    assert status == 200
    samples = parse_samples(body.decode())
    for project in ("proj_demo_web", "proj_demo_gpu", "proj_demo_data", "proj_demo_dev"):
        assert sample(samples, "latitudesh_up", project_id=project) == 1.0
    assert http_get(url + "/healthz")[0] == 200


def test_container_runs_as_non_root_on_a_read_only_root(podman: Podman,
                                                        container: tuple[str, str]) -> None:
    name, _ = container
    ids = podman("exec", name, "python3", "-c", "import os; print(os.getuid(), os.getgid())")
    assert ids.stdout.split() == ["10001", "10001"]
    assert podman("inspect", name, "--format", "{{.HostConfig.ReadonlyRootfs}}").stdout.strip() \
        == "true"
    write = podman("exec", name, "python3", "-c", "open('/opt/venv/x', 'w')", check=False)
    assert write.returncode != 0


def test_healthcheck_passes(podman: Podman, container: tuple[str, str]) -> None:
    name, _ = container
    assert podman("healthcheck", "run", name, check=False).returncode == 0


def test_sigterm_stops_the_container_cleanly(podman: Podman,
                                             container: tuple[str, str]) -> None:
    name, _ = container
    podman("stop", "--time", "10", name)
    # 0, not 137: the exporter (PID 1) handled SIGTERM itself before the SIGKILL
    assert podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    assert "msg=stopped clean=True" in podman("logs", name).stderr
