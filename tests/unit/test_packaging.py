"""packaging/: every unit, manifest and script is parsed and checked against the real CLI and settings.

No container image can be pulled here, so the Dockerfile, compose file and Kubernetes manifests are
checked by parsing them: their commands must parse with ``dtf``'s own argument parser, their variables
must be ones DTF reads, their ports ones the configured node listens on, their names must match up.
"""

from __future__ import annotations

import json
import plistlib
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dtf_app import config_sources
from dtf_app.cli import build_parser
from dtf_app.config import (
    FIELD_NAMES,
    check_high_availability,
    load_config_file,
    load_settings_with_sources,
)

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
KNOWN_ENV = ({f"DTF_{name.upper()}" for name in FIELD_NAMES} | set(config_sources.CONFIG_FILE_ENV)
             | set(config_sources.ENV_ALIASES) | set(config_sources.HA_ENV) | {"PYTHONUNBUFFERED"})


def parse_dtf(argv: list[str]) -> object:
    """Parse like ``dtf`` does; an unknown option or bad value fails the test (argparse exits 2)."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"dtf does not accept {argv!r}") from exc


def systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: {line!r} outside a section"
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize(("name", "mode"), [("dtf-coordinator.service", "coordinator"),
                                            ("dtf-worker.service", "worker"), ("dtf-worker@.service", "worker")])
def test_systemd_units(name: str, mode: str) -> None:
    unit = systemd_unit(PACKAGING / "systemd" / name)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"][0].replace("%i", "gpu0"))
    assert argv[0] == "/opt/dtf/dtf"
    args = parse_dtf(argv[1:])
    assert args.mode == mode and args.pid_file == service["PIDFile"][0].replace("%i", "gpu0")
    assert args.data_dir.startswith("/var/lib/dtf") and args.log_path == "/var/log/dtf"
    assert service["User"] == ["dtf"] and service["KillSignal"] == ["SIGTERM"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert hardening in service, hardening
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    if name == "dtf-worker@.service":
        assert args.worker_id == "gpu0" and "/etc/dtf/worker-%i.env" in " ".join(service["EnvironmentFile"])


def test_launchd_plist() -> None:
    plist = plistlib.loads((PACKAGING / "launchd" / "org.dtf.worker.plist").read_bytes())
    args = parse_dtf(plist["ProgramArguments"][1:])
    assert args.mode == "worker" and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert set(plist["EnvironmentVariables"]) <= KNOWN_ENV


def test_windows_service_wrapper() -> None:
    root = ET.parse(PACKAGING / "windows" / "dtf-service.xml").getroot()
    assert root.findtext("executable") == r"%BASE%\dtf.exe"
    # WinSW passes <arguments> as a Windows command line: split it the way the program will.
    argv = [a.strip('"') for a in shlex.split(root.findtext("arguments") or "", posix=False)]
    args = parse_dtf(argv)
    assert args.mode == "worker" and args.data_dir == r"C:\ProgramData\DTF\data"
    assert {env.get("name") for env in root.iter("env")} <= KNOWN_ENV


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_is_minimal_non_root_and_runs_dtf() -> None:
    instructions = dockerfile_instructions((PACKAGING / "docker" / "Dockerfile").read_text())
    words = [word for word, _ in instructions]
    assert words[0] == "FROM" and words.count("FROM") == 1
    user = next(rest for word, rest in instructions if word == "USER")
    assert user not in ("root", "0")
    entrypoint = json.loads(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    assert entrypoint == ["dtf"] and parse_dtf(cmd).mode == "coordinator"
    assert set(dockerfile_env(instructions)) <= KNOWN_ENV
    exposed = next(rest for word, rest in instructions if word == "EXPOSE")
    assert exposed == dockerfile_env(instructions)["DTF_PORT"]


def test_compose_file() -> None:
    text = (PACKAGING / "docker" / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) == {"coordinator", "worker-1", "worker-2", "dashboard"}
    assert services["dashboard"]["ports"] == ["8050:8050"]
    assert services["coordinator"]["ports"] == ["8080:8080"]
    for name, service in services.items():
        parse_dtf(service["command"])
        assert set(service.get("environment") or {}) <= KNOWN_ENV, name
    for worker in ("worker-1", "worker-2"):
        env = services[worker]["environment"]
        assert env["DTF_COORDINATOR"] == "http://coordinator:8080" and env["DTF_WORKER_ID"] == worker
        assert parse_dtf(services[worker]["command"]).mode == "worker"
    # The GPU stanza is there, commented out.
    assert re.search(r"^\s*# deploy:\n(\s*#.*\n)*\s*#\s+- driver: nvidia\n(\s*#.*\n)*\s*#\s+capabilities: \[gpu\]",
                     text, re.MULTILINE)


def k8s_documents() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted((PACKAGING / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def container_env(container: dict, pod_name: str, secrets: dict[tuple[str, str], dict]) -> dict[str, str]:
    """The container's environment as Kubernetes would set it (fieldRef and secretKeyRef resolved)."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item["valueFrom"]:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod_name
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = secrets[("Secret", ref["name"])]  # the Secret the manifest names exists
            env[item["name"]] = secret["stringData"][ref["key"]]
    return env


def test_kubernetes_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_documents()
    sts = docs[("StatefulSet", "dtf-ha-coordinator")]
    spec = sts["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    headless = docs[("Service", spec["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (container,) = spec["template"]["spec"]["containers"]
    assert parse_dtf(container["args"]).mode == "coordinator"
    env = container_env(container, "dtf-ha-coordinator-0", docs)
    assert {"COORDINATOR_ID", "ENABLE_HIGH_AVAILABILITY", "HIGH_AVAILABILITY_PEERS", "JWT_SECRET"} <= set(env)
    assert set(env) - {"JWT_SECRET"} <= KNOWN_ENV
    peers = env["HIGH_AVAILABILITY_PEERS"].split(",")
    assert peers == [f"dtf-ha-coordinator-{i}.{spec['serviceName']}:8080" for i in range(3)]

    # The ConfigMap mounted at /app/config holds the files CONFIG_FILE names, and DTF reads them.
    config_map = docs[("ConfigMap", spec["template"]["spec"]["volumes"][0]["configMap"]["name"])]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert env["CONFIG_FILE"].startswith(mount + "/")
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("JWT_SECRET", env["JWT_SECRET"])
    coordinator = load_config_file(str(tmp_path / Path(env["CONFIG_FILE"]).name), mode="coordinator")
    listened = {coordinator["port"], coordinator["workers_port"]}
    assert {p["containerPort"] for p in container["ports"]} == listened
    assert {p["port"] for p in headless["spec"]["ports"]} == listened
    client_service = docs[("Service", "dtf-coordinator")]
    assert {p["port"] for p in client_service["spec"]["ports"]} == listened

    worker = docs[("Deployment", "dtf-worker")]
    (wcontainer,) = worker["spec"]["template"]["spec"]["containers"]
    assert parse_dtf(wcontainer["args"]).mode == "worker"
    wenv = container_env(wcontainer, "dtf-worker-abc", docs)
    assert set(wenv) <= KNOWN_ENV and wenv["DTF_API_KEY"] == docs[("Secret", "dtf-worker-key")]["stringData"]["api-key"]
    worker_config = load_config_file(str(tmp_path / Path(wenv["CONFIG_FILE"]).name), mode="worker")
    url = worker_config["coordinator"][0]
    assert url == f"http://dtf-coordinator:{coordinator['workers_port']}"

    # The StatefulSet's exact environment makes pod 0 a member of a 3-node cluster, found by its name.
    # (tests/integration/test_ha.py starts three such coordinators on loopback addresses.)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CONFIG_FILE", str(tmp_path / "coordinator.yaml"))
    settings, sources = load_settings_with_sources({"data_dir": str(tmp_path / "d")}, mode="coordinator")
    assert settings.node_id == "dtf-ha-coordinator-0" and settings.high_availability["enabled"] is True
    check_high_availability(settings, sources)
    assert settings.peers_include_self
    from dtf_app.cluster import from_settings

    spec = from_settings(settings)
    assert spec.self_id == "dtf-ha-coordinator-0" and len(spec.members) == 3 and spec.quorum == 2


def test_github_actions_workflow_commands_parse() -> None:
    workflow = yaml.safe_load((PACKAGING / "github-actions" / "dtf-cluster.yml").read_text())
    steps = workflow["jobs"]["tasks"]["steps"]
    commands = []
    for step in steps:
        for line in (step.get("run") or "").splitlines():
            line = line.strip().rstrip("&").strip()
            if line.startswith("dtf "):
                commands.append(shlex.split(line.replace("$RUNNER_TEMP", "/tmp/runner"))[1:])
    modes = [parse_dtf(argv) for argv in commands]
    assert [getattr(a, "mode", None) for a in modes][:3] == ["coordinator", "worker", "worker"]
    assert any(getattr(a, "command", None) == "submit" for a in modes)
    assert (REPO / "assets" / "tasks" / "demo.json").exists()


def test_readme_documents_each_packaging_file() -> None:
    readme = (REPO / "README.md").read_text()
    for path in sorted(PACKAGING.rglob("*")):
        if path.is_file():
            assert str(path.relative_to(REPO)) in readme, f"README.md does not mention {path.relative_to(REPO)}"
