"""Packaging and deployment files: Dockerfile, compose stack, Kubernetes manifests."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter import __version__
from exporter.config import load_settings
from tests.conftest import ROOT, require_binary

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
KUBERNETES_VERSION = "1.30.0"


# --- Dockerfile ----------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = require_binary("hadolint")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in joined.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_dockerfile_is_multi_stage_on_an_overridable_base() -> None:
    froms = [arg for op, arg in instructions() if op == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert ("ARG", "BASE_IMAGE=python:3.12-slim") in instructions()
    assert ("COPY", "--from=build /opt/venv /opt/venv") in instructions()


def test_dockerfile_runtime_conventions() -> None:
    ops = dict(instructions()[::-1])  # the last of each: the runtime stage
    assert re.fullmatch(r"\d+:\d+", ops["USER"]) and not ops["USER"].startswith("0:")
    assert ops["EXPOSE"] == "10067"
    assert ops["ENTRYPOINT"] == '["latitudesh-exporter"]'
    assert ops["HEALTHCHECK"].endswith('CMD ["latitudesh-exporter", "healthcheck"]')
    for label in ("source", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE
    assert "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE and "PYTHONUNBUFFERED=1" in DOCKERFILE


# --- docker compose ------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def host_volumes(service: dict[str, Any]) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def test_compose_has_the_whole_stack() -> None:
    services = compose()["services"]
    assert set(services) == {"exporter", "prometheus", "alertmanager", "alert-log", "grafana"}
    exporter = services["exporter"]
    assert (DEPLOY / exporter["build"]["context"] / "Dockerfile").is_file()
    assert exporter["read_only"] is True
    script = exporter["entrypoint"][2]
    assert "--demo" in script and "LATITUDESH_AUTH_TOKEN" in script


def test_compose_references_only_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for source, _ in host_volumes(service):
            assert source.exists(), f"{name}: {source}"


def test_compose_host_ports_do_not_clash() -> None:
    ports = [
        str(p).split(":")[0] for s in compose()["services"].values() for p in s.get("ports", [])
    ]
    assert len(ports) == len(set(ports))
    assert set(ports) == {"10067", "9090", "9093", "3000"}


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    prometheus = compose()["services"]["prometheus"]
    for source, target in host_volumes(prometheus):
        if target.startswith("/etc/prometheus/"):
            shutil.copy(source, tmp_path / Path(target).name)
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["job_name"] == "latitudesh"
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["exporter:10067"]
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
    # the compose stack loads the shipped rules, all of them
    assert f"{sum(len(group['rules']) for group in shipped)} rules found" in result.stdout


def test_compose_grafana_provisions_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    targets = {t: s for s, t in host_volumes(grafana)}
    assert targets["/etc/grafana/provisioning"] == ROOT / "grafana" / "provisioning"
    assert (targets["/var/lib/grafana/dashboards"] / "latitudesh-billing.json").is_file()


# --- Kubernetes ----------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return {
        name: yaml.safe_load((K8S / "base" / name).read_text())
        for name in kustomization["resources"]
    }


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """The Kubernetes files with a token file in place, as a user prepares them."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    (copy / "components" / "token-file" / "token").write_text("lat_a-real-key\n")
    return copy


def rendered(directory: Path) -> list[dict[str, Any]]:
    result = kustomize(directory)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_base_lists_every_manifest_and_holds_no_secret() -> None:
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(manifests()) == on_disk
    assert all(m["kind"] != "Secret" for m in manifests().values())
    assert not list(K8S.rglob("secret*.yaml"))  # no placeholder to overwrite a real key


@pytest.mark.parametrize(
    "overlay", ["base", "overlays/kube-prometheus-stack", "overlays/persistent-state"]
)
def test_every_build_validates_strictly_against_the_kubernetes_schemas(
    deploy_copy: Path, overlay: str
) -> None:
    documents = rendered(deploy_copy / overlay)
    core = [d for d in documents if d["apiVersion"] in ("v1", "apps/v1")]
    assert {d["kind"] for d in core} >= {"ConfigMap", "Deployment", "Service"}
    (deployment,) = [d for d in core if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    if overlay.endswith("persistent-state"):
        claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
        assert any(
            d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim for d in core
        )
    else:
        assert "emptyDir" in volumes["state"]  # the warm start's file, by default
    for document in core:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    # The overlay chooses the namespace; the base leaves it to the one applying it.
    wanted = None if overlay == "base" else "monitoring"
    assert all(d["metadata"].get("namespace") == wanted for d in documents)


def test_strict_validation_catches_a_typo() -> None:
    broken = manifests()["deployment.yaml"]
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kube_prometheus_stack_overlay_labels_what_the_chart_selects(
    deploy_copy: Path,
) -> None:
    documents = {d["kind"]: d for d in rendered(deploy_copy / "overlays/kube-prometheus-stack")}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert documents[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    secret = documents["Secret"]
    assert secret["metadata"]["name"] == "latitudesh-exporter-token"  # no hash suffix
    assert base64.b64decode(secret["data"]["token"]) == b"lat_a-real-key\n"
    assert "release" not in documents["Deployment"]["metadata"]["labels"]


def test_the_token_file_component_refuses_to_build_without_a_token(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    result = kustomize(copy / "overlays/kube-prometheus-stack")
    assert result.returncode != 0
    assert "token" in result.stderr


def test_deployment_is_locked_down_and_probed() -> None:
    pod = manifests()["deployment.yaml"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert container["ports"][0]["containerPort"] == 10067


def test_token_is_mounted_from_the_secret_as_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    all_ = manifests()
    pod = all_["deployment.yaml"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "latitudesh-exporter-token"
    config_text = all_["configmap.yaml"]["data"]["config.yaml"]
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    for var in [v for v in os.environ if v.startswith("LATITUDESH_")]:
        monkeypatch.delenv(var)
    settings = load_settings(config, explicit=True)  # the ConfigMap is a valid config
    assert settings.api.token_file == Path(mounts["token"]) / "token"
    assert "--config.file=" + mounts["config"] + "/config.yaml" in pod["containers"][0]["args"]


def test_service_monitor_targets_the_service_and_sets_the_job() -> None:
    all_ = manifests()
    monitor = all_["servicemonitor.yaml"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == all_["service.yaml"]["metadata"]["labels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == all_["service.yaml"]["spec"]["ports"][0]["name"]
    assert {"targetLabel": "job", "replacement": "latitudesh"} in endpoint["relabelings"]


def test_prometheus_rule_holds_exactly_the_shipped_rules() -> None:
    rule = manifests()["prometheusrule.yaml"]
    assert rule["kind"] == "PrometheusRule"
    shipped = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
    assert rule["spec"]["groups"] == shipped
    spec = importlib.util.spec_from_file_location("generate", K8S / "generate_prometheusrule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (K8S / "base" / "prometheusrule.yaml").read_text(), (
        "run deploy/kubernetes/generate_prometheusrule.py"
    )


# --- one version, everywhere -------------------------------------------------------


def test_the_version_is_the_packages_everywhere() -> None:
    assert ("ARG", f"VERSION={__version__}") in instructions()
    (container,) = manifests()["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f":{__version__}")
    assert 'path = "exporter/__init__.py"' in (ROOT / "pyproject.toml").read_text()


def test_the_image_installs_dependencies_from_the_lock_before_the_source() -> None:
    ops = instructions()
    copies = [arg for op, arg in ops if op == "COPY"]
    assert copies.index("requirements.lock ./") < copies.index("exporter ./exporter")
    runs = " ".join(arg for op, arg in ops if op == "RUN")
    assert "--require-hashes" in runs and "-r requirements.lock" in runs
    assert "compileall" in runs and "__pycache__" not in runs
    lock = (ROOT / "requirements.lock").read_text()
    for dependency in (
        "httpx",
        "prometheus-client",
        "pydantic-settings",
        "apscheduler",
        "h11",
        "bcrypt",
    ):
        assert re.search(rf"^{dependency}==\S+ \\$", lock, re.M), dependency
    assert "--hash=sha256:" in lock


def test_the_compose_alerts_end_somewhere_you_can_see() -> None:
    """Before: the example Alertmanager config sent to localhost:5001, which inside its
    container is nothing: every notification failed, and no alert was ever seen."""
    services = compose()["services"]
    receiver = services["alert-log"]
    port = receiver["entrypoint"][-1]
    routes = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    urls = [c["url"] for r in routes["receivers"] for c in r.get("webhook_configs", [])]
    assert urls and all(url.startswith(f"http://alert-log:{port}/") for url in urls)
    assert "alert-log" in services["alertmanager"]["depends_on"]


def test_the_alert_log_prints_one_line_per_alert(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(DEPLOY / "alert-log.py"), "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split()[-1])
        notification = {
            "alerts": [
                {"status": "firing", "labels": {"alertname": "LatitudeshCreditLow", "x": "1"}},
                {"status": "resolved", "labels": {"alertname": "LatitudeshDataStale"}},
            ]
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/page",
            data=json.dumps(notification).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        lines = [process.stdout.readline().strip() for _ in range(2)]
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert (
        lines[0]
        == '/page firing LatitudeshCreditLow {"alertname": "LatitudeshCreditLow", "x": "1"}'
    )
    assert lines[1].startswith("/page resolved LatitudeshDataStale")
