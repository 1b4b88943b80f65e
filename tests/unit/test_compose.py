"""docker-compose.yml cannot run here (no Docker engine); check its structure instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_service_the_pipeline_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "clickhouse", "migrate", "worker", "sink"} <= set(services)


def test_servers_have_health_checks_and_volumes(compose: dict[str, Any]) -> None:
    for name in ("kafka", "clickhouse"):
        service = compose["services"][name]
        assert service["healthcheck"]["test"], name
        assert any(str(v).split(":")[0] in compose["volumes"] for v in service["volumes"]), name


def test_kafka_runs_kraft_without_auto_topic_creation(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_pipeline_services_run_real_subcommands(compose: dict[str, Any]) -> None:
    from pipeline.cli import build_parser

    parser = build_parser()
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or name in ("kafka", "clickhouse", "grafana"):
            continue
        args = parser.parse_args(command)  # raises SystemExit on an unknown command or flag
        assert args.handler, name
        config = Path(command[command.index("--config") + 1])
        assert (ROOT / "deploy" / "config" / config.name).is_file(), name


def test_pipeline_services_wait_for_healthy_servers_and_take_secrets_from_env(
    compose: dict[str, Any],
) -> None:
    for name in ("worker", "sink", "migrate"):
        service = compose["services"][name]
        depends = service["depends_on"]
        assert depends.get("kafka", {}).get("condition") == "service_healthy" or "migrate" in depends
        env = service["environment"]
        assert env["CDR_CLICKHOUSE_PASSWORD"].startswith("${"), "secrets come from .env, not the file"


def test_services_reading_clickhouse_start_after_migrate(compose: dict[str, Any]) -> None:
    for name in ("sink", "dashboard"):
        depends = compose["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert compose["services"]["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


def test_long_running_pipeline_services_have_health_checks(compose: dict[str, Any]) -> None:
    # Each probes the port the service listens on: metrics for worker and sink, /healthz
    # for the dashboard.
    from pipeline.runtime.settings import load_settings

    settings = load_settings(ROOT / "deploy" / "config" / "pipeline.toml", env={})
    ports = {"worker": settings.worker.metrics_port, "sink": settings.sink.metrics_port,
             "dashboard": settings.dashboard.port}
    for name, port in ports.items():
        probe = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/" in probe, name
    assert "/healthz" in " ".join(compose["services"]["dashboard"]["healthcheck"]["test"])


def test_production_config_loads() -> None:
    from pipeline.core.config import load_config
    from pipeline.runtime.settings import load_settings

    load_config(ROOT / "deploy" / "config" / "pipeline.toml")
    settings = load_settings(ROOT / "deploy" / "config" / "pipeline.toml", env={})
    assert settings.worker.store == "rocksdb://"
