"""deploy/ is part of the product: every file parses and is wired to real settings and names."""

from __future__ import annotations

import configparser
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from dagworker.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
KNOWN = {f"DAGWORKER_{f.name.upper()}" for f in fields(Settings)} | {"DAGWORKER_CONFIG_MODULE"}
WORKLOADS = {"Deployment", "StatefulSet"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {line!r} is not KEY=value"
            pairs[key.strip()] = value
    return pairs


def command_text(container: dict[str, Any]) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: p.name)
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_all(path), f"{path} is empty"


# -- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_all(DEPLOY / "docker-compose.yml")
    return doc


def test_compose_runs_redis_workers_per_queue_flower_and_exporter(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "worker", "worker-gpu", "flower", "metrics"} <= set(services)
    for name, svc in services.items():
        assert svc.get("image"), f"service {name} has no image"
        cmd = svc["command"] if isinstance(svc["command"], str) else " ".join(svc["command"])
        if name.startswith("worker"):
            assert "celery -A dagworker worker" in cmd
        if name == "flower":
            assert "celery -A dagworker flower" in cmd and "--basic-auth=" in cmd
        if name == "metrics":
            assert "dagworker metrics" in cmd
    queues = {}
    for name, svc in services.items():
        if name.startswith("worker"):
            argv = shlex.split(shlex.split(svc["command"])[-1])  # the script of `sh -c "..."`
            queues[name] = argv[argv.index("-Q") + 1]
    assert queues == {"worker": "dagworker", "worker-gpu": "gpu"}
    assert services["worker"]["deploy"]["replicas"] >= 2
    # Flower's password must be given: compose refuses to start without it
    assert "?" in services["flower"]["environment"]["FLOWER_PASSWORD"]


def test_compose_runs_one_beat_with_its_schedule_file_outside_the_read_only_app(
    compose: dict[str, Any],
) -> None:
    beat = compose["services"]["beat"]
    argv = shlex.split(shlex.split(beat["command"])[-1])
    start = argv.index("celery")
    assert argv[start : start + 4] == ["celery", "-A", "dagworker", "beat"]
    schedule = argv[argv.index("--schedule") + 1]
    assert not schedule.startswith("/app") and beat["volumes"] == ["..:/app:ro"]
    assert beat["deploy"]["replicas"] == 1
    assert beat["environment"]["DAGWORKER_REDIS_URL"]


def test_compose_environment_names_only_known_settings(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key in svc.get("environment", {}):
            if key.startswith("DAGWORKER_"):
                assert key in KNOWN, f"service {name}: unknown setting {key}"
        if name != "redis":
            assert "DAGWORKER_REDIS_URL" in svc["environment"], name


def test_redis_conf_persists_and_never_evicts() -> None:
    conf = dict(
        line.split(None, 1)
        for line in (DEPLOY / "redis.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert conf["appendonly"] == "yes" and conf["maxmemory-policy"] == "noeviction"


@pytest.mark.parametrize("name", ["settings.example.env", "systemd/dagworker.env"])
def test_env_files_name_only_known_settings(name: str) -> None:
    keys = set(env_file(DEPLOY / name))
    assert keys and keys <= KNOWN, keys - KNOWN
    if name == "settings.example.env":  # the annotated example covers every setting
        text = (DEPLOY / name).read_text()
        assert all(k in text for k in KNOWN), [k for k in KNOWN if k not in text]


# -- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += load_all(path)
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def test_k8s_manifests_are_well_formed(manifests: list[dict[str, Any]]) -> None:
    for doc in manifests:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"].get("name"), doc
        assert "spec" in doc or doc["kind"] in ("ConfigMap", "Secret"), doc["metadata"]["name"]
        if doc["kind"] in WORKLOADS:
            name = doc["metadata"]["name"]
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{name}: selector does not match labels"
            for container in _containers(doc):
                assert container.get("image") and container.get("command"), name


def test_k8s_services_select_a_workload(manifests: list[dict[str, Any]]) -> None:
    templates = [d["spec"]["template"]["metadata"]["labels"] for d in manifests
                 if d["kind"] in WORKLOADS]  # fmt: skip
    services = [d for d in manifests if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} >= {"dagworker-redis", "dagworker-flower"}
    for svc in services:
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= t.items() for t in templates), svc["metadata"]["name"]


def test_k8s_references_name_existing_configmaps_and_secret_keys(
    manifests: list[dict[str, Any]],
) -> None:
    configmaps = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Secret"}
    for doc in manifests:
        if doc["kind"] not in WORKLOADS:
            continue
        pod = doc["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], var
    for cm in configmaps.values():
        for key in cm["data"]:
            assert not key.startswith("DAGWORKER_") or key in KNOWN, key


def test_k8s_one_worker_deployment_per_queue_and_flower_with_auth(
    manifests: list[dict[str, Any]],
) -> None:
    queues = {}
    for doc in manifests:
        for container in _containers(doc) if doc["kind"] in WORKLOADS else []:
            argv = [*container["command"], *container.get("args", [])]
            if argv[:4] == ["celery", "-A", "dagworker", "worker"]:
                queues[argv[argv.index("-Q") + 1]] = doc["metadata"]["name"]
                assert doc["kind"] == "Deployment"
                assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
            if argv[:4] == ["celery", "-A", "dagworker", "flower"]:
                assert "--basic-auth=$(FLOWER_BASIC_AUTH)" in argv
                assert "FLOWER_BASIC_AUTH" in {v["name"] for v in container["env"]}
    assert set(queues) == {"dagworker", "gpu"}
    assert len(set(queues.values())) == 2


def test_k8s_runs_one_beat_writing_its_schedule_file_to_a_volume(
    manifests: list[dict[str, Any]],
) -> None:
    beats = []
    for doc in manifests:
        for container in _containers(doc) if doc["kind"] in WORKLOADS else []:
            argv = [*container["command"], *container.get("args", [])]
            if argv[:4] == ["celery", "-A", "dagworker", "beat"]:
                beats.append((doc, container, argv))
    ((doc, container, argv),) = beats
    assert doc["spec"]["replicas"] == 1 and doc["spec"]["strategy"]["type"] == "Recreate"
    (schedule,) = [a.split("=", 1)[1] for a in argv if a.startswith("--schedule=")]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [p for p in mounts if schedule.startswith(p + "/")]
    assert "emptyDir" in volumes[mounts[mount]]


def test_k8s_redis_keeps_its_aof_on_a_volume_claim(manifests: list[dict[str, Any]]) -> None:
    (redis,) = [d for d in manifests if d["metadata"]["name"] == "dagworker-redis"
                and d["kind"] == "StatefulSet"]  # fmt: skip
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in _containers(redis)[0]["volumeMounts"]}
    assert "data" in claims and mounts["data"] == "/data"
    (conf,) = [d for d in manifests if d["metadata"]["name"] == "dagworker-redis-config"]
    text = conf["data"]["redis.conf"]
    assert "appendonly yes" in text and "maxmemory-policy noeviction" in text
    assert "dir /data" in text


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = load_all(K8S / "kustomization.yaml")
    listed = set(kust["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


# -- systemd ---------------------------------------------------------------------------------


def systemd_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / name).read_text())
    return unit


def test_systemd_unit_runs_one_worker_per_queue_instance() -> None:
    unit = systemd_unit("dagworker-worker@.service")
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert "celery -A dagworker worker" in service["ExecStart"]
    assert "-Q %i" in service["ExecStart"]
    assert service["EnvironmentFile"].endswith("dagworker.env")
    assert int(service["TimeoutStopSec"]) >= 60 and service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_beat_unit_shares_the_workers_environment() -> None:
    unit = systemd_unit("dagworker-beat.service")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/celery") and argv[1:4] == ["-A", "dagworker", "beat"]
    # its schedule file goes to the unit's private /tmp, not the install directory
    assert argv[argv.index("--schedule") + 1].startswith("/tmp/")
    assert service["PrivateTmp"] == "true"
    worker = systemd_unit("dagworker-worker@.service")["Service"]
    assert service["EnvironmentFile"] == worker["EnvironmentFile"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
