"""Deployment files checked against the code: the Kubernetes manifests against the API's schemas
(kubernetes-validate, strict), their probes against the app's routes, every variable they set against
the Settings the server reads, docker-compose's cluster profile against nginx's upstream list, and the
nginx configuration with `nginx -t` and against the server's limits."""

from __future__ import annotations

import copy
import re
from dataclasses import fields
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness import ROOT
from harness.nginx import SITE, UPSTREAM, Nginx
from wav2lip_core.config import Settings

K8S_VERSION = "1.37.0"
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
SETTINGS_VARS = {f.metadata["env"].var for f in fields(Settings)}


def directive(path: Path, name: str) -> str:
    """The value of the one `name value;` line in an nginx or gunicorn config file."""
    (value,) = re.findall(rf"^\s*{name}(?:\s*=\s*|\s+)([^;#\n]+?);?\s*(?:#.*)?$", path.read_text(), re.MULTILINE)
    return value


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"] if doc["kind"] in ("Deployment", "StatefulSet") else []


def test_every_manifest_validates_strictly() -> None:
    kinds = {doc["kind"] for doc in documents()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "StatefulSet"} <= kinds
    for doc in documents():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_catches_a_mistake() -> None:
    deployment = copy.deepcopy(next(d for d in documents() if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_probes_name_routes_of_the_app_and_env_names_settings() -> None:
    from app import app

    routes = {rule.rule for rule in app.url_map.iter_rules()}
    (server,) = [c for d in documents() for c in containers(d) if d["metadata"]["name"] == "lipsync"]
    probes = {kind: server[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/health", "readinessProbe": "/readyz", "livenessProbe": "/livez"} and set(probes.values()) <= routes
    assert {e["name"] for e in server["env"]} <= SETTINGS_VARS
    port = int(next(e["value"] for e in server["env"] if e["name"] == "BIND").rsplit(":", 1)[1])
    assert server["ports"][0]["containerPort"] == port


def test_compose_cluster_replicas_are_nginx_upstreams_and_set_only_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    cluster = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    replicas = {name for name in cluster if name.startswith("lipsync-")}
    assert {"redis", "nginx"} <= cluster and len(replicas) >= 2
    upstream = (ROOT / "deploy" / "nginx" / "upstream-compose.conf").read_text()
    assert set(re.findall(r"server (lipsync-\d+):8000", upstream)) == replicas
    for name in (*replicas, "lipsync"):
        env = services[name]["environment"]
        assert set(env) <= SETTINGS_VARS, set(env) - SETTINGS_VARS
    assert all(services[r]["environment"]["REDIS_URL"].startswith("redis://redis:") for r in replicas)
    (mount,) = services["nginx"]["volumes"]
    folder, target = mount.split(":")[:2]
    assert set((ROOT / folder).resolve().glob("*.conf")) == {SITE, UPSTREAM}  # all nginx includes there: what the suite runs
    start = services["nginx"]["command"][-1]
    assert start.startswith(f"{target}/") and (ROOT / folder / start.removeprefix(f"{target}/")).is_file()
    assert f"{target}/{UPSTREAM.name}" in (ROOT / folder / "start.sh").read_text()  # the replicas it watches


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    result = Nginx(["127.0.0.1:8001", "127.0.0.1:8002"], tmp_path / "nginx").check()
    assert result.returncode == 0 and "syntax is ok" in result.stderr, result.stderr


def test_nginx_limits_match_the_servers() -> None:
    defaults = Settings()
    assert directive(SITE, "client_max_body_size") == f"{defaults.max_request_bytes // 2**20}m"  # MAX_REQUEST_BYTES
    assert int(directive(SITE, "proxy_read_timeout").removesuffix("s")) > defaults.request_timeout_s  # the app's 504 first
    keepalive = int(directive(ROOT / "gunicorn.conf.py", "keepalive"))
    assert int(directive(UPSTREAM, "keepalive_timeout").removesuffix("s")) < keepalive  # nginx closes idle connections first
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "lipsync"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= defaults.graceful_timeout_s()
