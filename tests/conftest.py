"""Shared pytest setup: the integration fixtures (real Kafka, real ClickHouse)."""

pytest_plugins = [
    "tests.integration.kafka_fixtures",
    "tests.integration.clickhouse_fixtures",
]
