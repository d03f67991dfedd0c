"""Build and run the real image with Podman (no Docker engine runs on these machines),
and the Kubernetes manifests with `podman kube play`.

No registry is reachable, so the base image is built locally (debootstrap of Debian
bookworm with python3, imported into Podman and cached between runs) and pip installs
from a wheelhouse made on the host from the hash-locked requirements. Slow (about a
minute the first time); skipped with a reason where Podman can't run, failing under
CI=true.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from exporter import __version__
from testing.fakeapi import FakeApi
from testing.waits import wait_for
from tests.conftest import (
    DEMO_PROJECTS,
    ROOT,
    TOKEN,
    free_port,
    frozen_account,
    http_get,
    parse_samples,
    require_binary,
    sample,
)

# one worker runs the module: the image is built once
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group("container")]

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

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
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
                    return str(fields["URIs"]).split()[0]
        elif path.suffix in ("", ".list"):  # one-line: deb [options] URI suite components
            for uri, suite in re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
                if suite == "bookworm":
                    return str(uri)
    return None


def build_base(podman: Podman, tmp: Path) -> None:
    rootfs = tmp / "rootfs"
    mirror = host_debian_mirror()
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            *([mirror] if mirror else []),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        imported = subprocess.run(
            ["podman", "import", "-", BASE],
            stdin=tar.stdout,
            capture_output=True,
            env=podman.env,
            timeout=600,
            check=False,
        )
    assert tar.returncode == 0
    assert imported.returncode == 0, imported.stderr


@contextmanager
def wheelhouse_server(folder: Path) -> Iterator[str]:
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    for binary in ("podman", "runc", "debootstrap"):
        require_binary(binary)
    tmp = tmp_path_factory.mktemp("podman")
    (tmp / "containers.conf").write_text(CONTAINERS_CONF)
    tool = Podman({**os.environ, "CONTAINERS_CONF": str(tmp / "containers.conf")}, 0)
    if tool("image", "exists", BASE, check=False).returncode != 0:
        build_base(tool, tmp)
    context = tmp / "context"
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    wheelhouse = str(context / "wheelhouse")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary",
            ":all:",
            "--require-hashes",
            "--dest",
            wheelhouse,
            "-r",
            str(ROOT / "requirements.lock"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", wheelhouse, "hatchling"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    # The dependencies are installed before the source is copied (a layer of their own),
    # so the wheelhouse is served over HTTP to a build on the host's network.
    with wheelhouse_server(Path(wheelhouse)) as links:
        tool(
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={BASE}",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--build-arg",
            f"PIP_FIND_LINKS={links}",
            "-t",
            IMAGE,
            str(context),
        )
    shutil.rmtree(wheelhouse)
    tool.size = int(tool("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    tool("tag", IMAGE, f"ghcr.io/latitudesh-exporter/latitudesh-exporter:{__version__}")
    yield tool
    tool("rm", "--force", "--all", check=False)
    tool("rmi", "--force", IMAGE, check=False)


@pytest.fixture(scope="module")
def container(podman: Podman) -> Iterator[tuple[str, str]]:
    name = f"latitudesh-test-{os.getpid()}"
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--publish",
        "127.0.0.1::10067",  # a host port podman picks and binds; read back below
        IMAGE,
        "--demo",
    )
    published = podman("port", name, "10067/tcp").stdout.strip().splitlines()[0]
    url = f"http://{published}"

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
    for project in DEMO_PROJECTS:
        assert sample(samples, "latitudesh_up", project_id=project) == 1.0
    assert http_get(url + "/healthz")[0] == 200


def test_container_runs_as_non_root_on_a_read_only_root(
    podman: Podman, container: tuple[str, str]
) -> None:
    name, _ = container
    ids = podman("exec", name, "python3", "-c", "import os; print(os.getuid(), os.getgid())")
    assert ids.stdout.split() == ["10001", "10001"]
    assert (
        podman("inspect", name, "--format", "{{.HostConfig.ReadonlyRootfs}}").stdout.strip()
        == "true"
    )
    write = podman("exec", name, "python3", "-c", "open('/opt/venv/x', 'w')", check=False)
    assert write.returncode != 0


def test_healthcheck_passes(podman: Podman, container: tuple[str, str]) -> None:
    name, _ = container
    assert podman("healthcheck", "run", name, check=False).returncode == 0


def test_sigterm_stops_the_container_cleanly(podman: Podman, container: tuple[str, str]) -> None:
    name, _ = container
    podman("stop", "--time", "10", name)
    # 0, not 137: the exporter (PID 1) handled SIGTERM itself before the SIGKILL
    assert podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    assert "msg=stopped clean=True" in podman("logs", name).stderr


def test_the_image_carries_compiled_byte_code(podman: Podman) -> None:
    """On a read-only root Python cannot write .pyc files: they must come with it."""
    found = podman(
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        IMAGE,
        "-c",
        "import exporter.cli, pathlib, importlib.util as u;"
        "print(pathlib.Path(u.cache_from_source(exporter.cli.__file__)).exists())",
    )
    assert found.stdout.strip() == "True"


def test_the_kubernetes_manifests_run_with_podman_kube_play(podman: Podman, tmp_path: Path) -> None:
    """The base Deployment, ConfigMap and a token Secret, played by Podman: the pod runs
    as uid 10001 on a read-only root, reads its token from the mounted Secret, answers
    its probes' paths and serves the fake API's figures on /metrics."""
    kubectl = require_binary("kubectl")
    with FakeApi(frozen_account(token=TOKEN)) as api:
        deploy = tmp_path / "kubernetes"
        shutil.copytree(ROOT / "deploy" / "kubernetes", deploy)
        (deploy / "components" / "token-file" / "token").write_text(TOKEN + "\n")
        rendered = subprocess.run(
            [kubectl, "kustomize", str(deploy / "overlays" / "kube-prometheus-stack")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        documents = [
            d
            for d in yaml.safe_load_all(rendered)
            if d["kind"] in ("Deployment", "ConfigMap", "Secret")
        ]
        port = free_port()
        paths: dict[str, str] = {}
        for document in documents:
            document["metadata"].pop("namespace", None)
            kind = document["kind"]
            if kind == "Secret":
                # podman 4.3 mounts a Secret's data still base64-encoded, whatever its
                # form: the same file reaches the pod through a ConfigMap instead.
                document.update(
                    kind="ConfigMap",
                    data={
                        key: base64.b64decode(value).decode()
                        for key, value in document["data"].items()
                    },
                )
                document.pop("type", None)
            if kind == "ConfigMap":
                config = yaml.safe_load(document["data"]["config.yaml"])
                config["api"]["base_url"] = api.url
                config["api"]["requests_per_minute"] = 6000
                document["data"]["config.yaml"] = yaml.safe_dump(config)
            if kind == "Deployment":
                # Host networking (to reach the fake API on 127.0.0.1) cannot publish
                # ports: the pod listens on a free port of the host instead, and the
                # probes name it by number.
                container = document["spec"]["template"]["spec"]["containers"][0]
                container["args"].append(f"--web.listen-address=127.0.0.1:{port}")
                assert container.pop("ports")[0]["containerPort"] == 10067
                (token,) = [
                    v for v in document["spec"]["template"]["spec"]["volumes"] if "secret" in v
                ]
                secret = token.pop("secret")
                token["configMap"] = {
                    "name": secret["secretName"],
                    "defaultMode": secret["defaultMode"],
                }
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    container[probe]["httpGet"]["port"] = port
                    paths[probe] = container[probe]["httpGet"]["path"]
        played = tmp_path / "play.yaml"
        played.write_text(yaml.safe_dump_all(documents))
        podman("kube", "play", "--network", "host", "--replace", str(played))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                lambda: _status(url + "/readyz") == 200, timeout=90, message="the pod to be ready"
            )
            assert paths == {
                "livenessProbe": "/healthz",
                "readinessProbe": "/readyz",
                "startupProbe": "/healthz",
            }
            for path in set(paths.values()):
                assert _status(url + path) == 200
            samples = parse_samples(http_get(url + "/metrics")[2].decode())
            assert sample(samples, "latitudesh_up", project_id="proj_demo_gpu") == 1.0
            assert api.request_count(key=TOKEN) >= 5  # the token came from the Secret
            names = podman("ps", "--format", "{{.Names}}").stdout.split()
            (exporter,) = [
                n for n in names if n.startswith("latitudesh-exporter-pod") and "infra" not in n
            ]
            ids = podman("exec", exporter, "python3", "-c", "import os; print(os.getuid())")
            assert ids.stdout.strip() == "10001"
            write = podman("exec", exporter, "python3", "-c", "open('/x', 'w')", check=False)
            assert write.returncode != 0  # read-only root
        finally:
            podman("kube", "down", str(played), check=False)


def _status(url: str) -> int:
    try:
        return http_get(url, timeout=2)[0]
    except OSError:
        return 0
