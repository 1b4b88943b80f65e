"""docker-compose.secure.yml over docker-compose.yml: the secured deployment's structure.

No Docker engine runs here, so the files are merged the way compose merges an override
(mappings key by key, lists appended) and the result is checked: no plaintext listener,
the authorizer on, one identity per service with the ACLs of its job, every password a
compose secret read from a file that `secure.sh compose` makes under the git-ignored
.stack/, TLS to ClickHouse.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.kafka.acls import pipeline_grants

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_SERVICES = ("migrate", "worker", "sink", "dashboard", "kafka-setup")


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(over, list):
        return base + [item for item in over if item not in base]
    return over


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.secure.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose(override: dict[str, Any]) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    merged = _merge(base, override)
    assert isinstance(merged, dict)
    return merged


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_kafka_has_no_plaintext_listener_and_authorizes(compose: dict[str, Any]) -> None:
    env = _env(compose["services"]["kafka"])
    listeners = [entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")]
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    assert {protocols[name] for name in listeners} <= {"SASL_SSL", "SSL"}
    assert "PLAINTEXT" not in protocols.values()
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:broker"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    for listener in ("MTLS", "CONTROLLER"):  # certificate listeners want one
        assert env[f"KAFKA_LISTENER_NAME_{listener}_SSL_CLIENT_AUTH"] == "required"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    probe = " ".join(compose["services"]["kafka"]["healthcheck"]["test"])
    assert "localhost:9094" in probe and "--command-config" in probe


def test_every_pipeline_service_connects_securely(compose: dict[str, Any]) -> None:
    for name in PIPELINE_SERVICES:
        env = _env(compose["services"][name])
        if name in ("worker", "sink", "kafka-setup"):
            assert env["CDR_KAFKA_SECURITY_PROTOCOL"] in ("SASL_SSL", "SSL"), name
            assert env["CDR_KAFKA_CA_FILE"].startswith("/etc/cdr-pipeline/tls/"), name
        if name in ("migrate", "sink", "dashboard"):
            assert env["CDR_CLICKHOUSE_URL"].startswith("native://clickhouse:9440/"), name
            assert env["CDR_CLICKHOUSE_SECURE"] == "true", name
        mounts = [str(v) for v in compose["services"][name].get("volumes", [])]
        assert any(m.startswith("./.stack/compose/tls:") and m.endswith(":ro")
                   for m in mounts), name


def test_each_service_has_its_own_identity_with_the_acls_of_its_job(
        compose: dict[str, Any]) -> None:
    principals = {g.principal for g in pipeline_grants()}
    users: dict[str, str] = {}
    for name in ("worker", "sink"):
        user = _env(compose["services"][name])["CDR_KAFKA_USERNAME"]
        assert user == name and user in principals
    for name in ("migrate", "sink", "dashboard"):
        users[name] = _env(compose["services"][name])["CDR_CLICKHOUSE_USER"]
    assert len(set(users.values())) == len(users), users
    assert users == {"migrate": "cdr_migrate", "sink": "cdr_sink", "dashboard": "cdr_dashboard"}
    # the read-only dashboard does not refresh the aggregates itself
    command = compose["services"]["dashboard"]["command"]
    assert command[command.index("--refresh-interval") + 1] == "0"


def test_passwords_are_compose_secrets_from_generated_files(compose: dict[str, Any]) -> None:
    secrets = compose["secrets"]
    for name, spec in secrets.items():
        assert spec["file"].startswith("./.stack/compose/secrets/"), name
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".stack/" in ignored  # generated secrets and keys never reach git
    for name in PIPELINE_SERVICES:
        service = compose["services"][name]
        env = _env(service)
        mine = set(service.get("secrets", []))
        for key, value in env.items():
            if key.endswith("_FILE") and ("PASSWORD" in key or "TOKEN" in key):
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in mine, (name, key)
            elif "PASSWORD" in key or "TOKEN" in key:
                # no value of its own: empty (the file wins) or the base file's ${...}
                assert value == "" or re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", value), (name, key)
        assert mine <= set(secrets), name
    # the kafka-setup one-shot sets the SCRAM users of every principal that has ACLs
    setup = compose["services"]["kafka-setup"]
    kafka_secrets = {s.removeprefix("kafka-") for s in setup["secrets"]}
    assert kafka_secrets == {g.principal for g in pipeline_grants()}


def test_the_generated_files_come_from_the_documented_command(override: dict[str, Any]) -> None:
    script = (ROOT / "deploy" / "local" / "secure.sh").read_text(encoding="utf-8")
    header = (ROOT / "docker-compose.secure.yml").read_text(encoding="utf-8")
    assert "bash deploy/local/secure.sh compose" in header
    assert "bash deploy/local/secure.sh compose" in (ROOT / "docs" / "security.md").read_text()
    assert "compose) cmd_compose ;;" in script
    principals = re.search(r"KAFKA_PRINCIPALS=\(([^)]*)\)", script)
    users = re.search(r"CH_USERS=\(([^)]*)\)", script)
    assert principals is not None and users is not None
    made = {f"kafka-{p}.password" for p in principals.group(1).split()}
    made |= {f"ch-{u}.password" for u in users.group(1).split()} | {"dashboard.token"}
    for name, spec in override["secrets"].items():
        assert spec["file"].rsplit("/", 1)[1] in made, name
    for mount in ("tls.xml", "users.xml", "health.properties"):
        assert mount in script


def test_the_secured_commands_are_real(compose: dict[str, Any]) -> None:
    from pipeline.cli import build_parser
    from pipeline.kafka.acls import main as acls_main

    for name in ("migrate", "worker", "sink", "dashboard"):
        assert build_parser().parse_args(compose["services"][name]["command"]).handler, name
    setup = compose["services"]["kafka-setup"]
    assert setup["entrypoint"][-1] == "pipeline.kafka.acls"
    with pytest.raises(SystemExit) as shown:  # the action parses; --help ends it
        acls_main([*setup["command"], "--help"])
    assert shown.value.code == 0
