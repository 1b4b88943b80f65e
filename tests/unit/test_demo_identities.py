"""Who the demo's parts run as (pipeline/demo/common.py, pipeline/demo/sip.py): on the
secured stack each under its identity file (the SIP demo's Kamailio adapter as `ingest`,
its read-back of the events as `rerate` in a group of rerate's prefix), off it as the
process itself with the run's bootstrap."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from pipeline.demo.common import process_env
from pipeline.demo.sip import SIP_CONFIG, events_reader
from pipeline.errors import ConfigError
from pipeline.kafka.acls import RERATE_GROUP_PREFIX

SECURED_BOOTSTRAP = "127.0.0.1:49092,127.0.0.1:49192,127.0.0.1:49292"


@pytest.fixture
def identities(tmp_path: Path) -> Path:
    """Identity files as deploy/local/secure.sh writes them (the secret files exist)."""
    folder = tmp_path / "identities"
    folder.mkdir()
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here\n", encoding="utf-8")
    for name in ("ingest", "rerate", "worker"):
        secret = tmp_path / f"kafka-{name}.password"
        secret.write_text(f"{name}-secret\n", encoding="utf-8")
        (folder / f"{name}.env").write_text(
            f"CDR_KAFKA_BOOTSTRAP='{SECURED_BOOTSTRAP}'\n"
            "CDR_KAFKA_SECURITY_PROTOCOL='SASL_SSL'\nCDR_KAFKA_SASL_MECHANISM='SCRAM-SHA-512'\n"
            f"CDR_KAFKA_USERNAME='{name}'\nCDR_KAFKA_PASSWORD_FILE='{secret}'\n"
            f"CDR_KAFKA_CA_FILE='{ca}'\n", encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def no_cdr_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("CDR_")]:
        monkeypatch.delenv(key)


def _args(identities: Path | None, bootstrap: str) -> argparse.Namespace:
    return argparse.Namespace(identities=identities, bootstrap=bootstrap, config=SIP_CONFIG)


def test_on_the_secured_stack_the_adapter_runs_as_ingest(identities: Path) -> None:
    args = _args(identities, SECURED_BOOTSTRAP)
    env = process_env(args, "ingest", "")
    assert env["CDR_KAFKA_USERNAME"] == "ingest"
    assert env["CDR_KAFKA_BOOTSTRAP"] == SECURED_BOOTSTRAP  # the identity's, not overridden
    assert env["CDR_KAFKA_TOPIC_PREFIX"] == ""  # the deployment's topics
    assert "ingest-secret" not in "".join(env.values())  # a path to the secret, not the secret
    assert process_env(args, "worker", "")["CDR_KAFKA_USERNAME"] == "worker"


def test_on_the_secured_stack_the_events_are_read_back_as_rerate(identities: Path) -> None:
    reader, group = events_reader(_args(identities, SECURED_BOOTSTRAP), "20260101120000")
    assert reader.username == "rerate" and reader.bootstrap == SECURED_BOOTSTRAP
    assert group.startswith(RERATE_GROUP_PREFIX) and "20260101120000" in group


def test_a_missing_identity_names_its_file(identities: Path) -> None:
    (identities / "ingest.env").unlink()
    with pytest.raises(ConfigError, match=r"--identities: .*ingest\.env missing"):
        process_env(_args(identities, SECURED_BOOTSTRAP), "ingest", "")


def test_off_the_secured_stack_the_run_names_bootstrap_and_topics() -> None:
    args = _args(None, "127.0.0.1:19092")
    env = process_env(args, "ingest", "sipdemo-1-")
    assert env["CDR_KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"
    assert env["CDR_KAFKA_TOPIC_PREFIX"] == "sipdemo-1-"
    assert "CDR_KAFKA_USERNAME" not in env
    assert events_reader(args, "1") == ("127.0.0.1:19092", "sipdemo-reader")
