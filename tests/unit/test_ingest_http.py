"""The HTTP way in without a broker: body parsing, the token, limits, settings, the CLI.

Requests go to a real uvicorn on a free loopback port; the producer is a real
AckingProducer pointed at a closed port (nothing here reaches Kafka: every case is
answered before producing, or is about Kafka being unreachable).
"""

from __future__ import annotations

import argparse
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError, InvalidEvent
from pipeline.ingest.batch import Tick, parse_body, parse_lines
from pipeline.ingest.cli_http import register
from pipeline.ingest.http import check_ingest_token, create_app, make_state
from pipeline.ingest.http_producer import AckingProducer
from pipeline.ingest.http_server import BackgroundServer
from pipeline.offline.rate_file import rate_file
from pipeline.runtime.settings import load_settings
from tests.paths import EXAMPLE
from tests.ports import free_port

TOKEN = "unit-test-token-0123456789"  # noqa: S105 - a test token
SETUP = {"event_id": "e1", "call_id": "c1", "switch_id": "sw", "event_type": "SETUP",
         "ts_ms": 1_764_000_000_000, "account_id": "acme", "caller": "1555", "callee": "4477"}


def post(url: str, body: bytes, token: str | None = TOKEN,
         path: str = "/v1/events") -> tuple[int, dict[str, str], Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/x-ndjson"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = data.decode()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed


def get(url: str, path: str) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, text


@pytest.fixture
def server() -> Iterator[BackgroundServer]:
    producer = AckingProducer(f"127.0.0.1:{free_port()}", "call-events", timeout_s=1.0)
    state = make_state(producer, TOKEN, max_body_bytes=4096, retry_after_s=3)
    try:
        with BackgroundServer(create_app(state), "127.0.0.1", free_port()) as srv:
            yield srv
    finally:
        producer.close(2.0)


# -- the batch helper ----------------------------------------------------------------------


def test_lines_are_judged_as_rate_file_judges_them(tmp_path: Path) -> None:
    events = (EXAMPLE / "events.jsonl").read_text().splitlines()
    batch = parse_lines(events)
    rejects = tmp_path / "rejects.jsonl"
    with (EXAMPLE / "events.jsonl").open() as src, rejects.open("w") as rej:
        rate_file_result = rate_file(_config(), src, open(tmp_path / "out", "w"), rej)
    assert len(batch.rejects) == rate_file_result.rejected == 2
    assert [r.to_json() for r in batch.rejects] == rejects.read_text().splitlines()


def _config() -> Any:
    from pipeline.core.config import load_config

    return load_config(EXAMPLE / "config.toml")


def test_body_array_and_lines_and_ticks() -> None:
    batch, array = parse_body(json.dumps([SETUP, {"x": 1}, 5]).encode())
    assert array and [pos for pos, _ in batch.items] == [0]
    assert [(r.line, r.category) for r in batch.rejects] == [(1, "bad event_type"),
                                                             (2, "undecodable")]
    body = b"\n".join([json.dumps(SETUP).encode(), b"", b"{nope", b'{"tick_ms": 5}'])
    batch, array = parse_body(body)
    assert not array
    assert batch.items[1] == (4, Tick(5))
    assert batch.rejects[0].line == 3 and "not valid JSON" in batch.rejects[0].reason


def test_unreadable_bodies_say_why() -> None:
    with pytest.raises(InvalidEvent, match="not a JSON array"):
        parse_body(b"[{\"a\": 1},")
    with pytest.raises(InvalidEvent, match="not UTF-8"):
        parse_body(b"\xff\xfe")


# -- token and settings ----------------------------------------------------------------------


def test_token_rules_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="CDR_INGEST_HTTP_TOKEN"):
        check_ingest_token("")
    with pytest.raises(ConfigError, match="too short"):
        check_ingest_token("short")
    assert check_ingest_token(TOKEN) == TOKEN


def test_settings_section_env_and_unknown_keys(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[ingest_http]\nport = 9001\nmax_body_bytes = 65536\n")
    settings = load_settings(conf, env={"CDR_INGEST_HTTP_TOKEN": TOKEN})
    assert settings.ingest_http.port == 9001
    assert settings.ingest_http.token.reveal() == TOKEN
    assert TOKEN not in repr(settings)
    conf.write_text("[ingest_http]\nmax_body = 1\n")
    with pytest.raises(ConfigError, match="ingest_http.max_body: unknown key"):
        load_settings(conf, env={})
    conf.write_text("[ingest_http]\nrequest_timeout_s = 0\n")
    with pytest.raises(ConfigError, match="request_timeout_s"):
        load_settings(conf, env={})


def test_cli_joins_an_existing_ingest_group() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    ingest = sub.add_parser("ingest").add_subparsers(dest="switch")
    ingest.add_parser("kamailio")
    register(sub)
    args = parser.parse_args(["ingest", "http", "--config", "c.toml", "--port", "1"])
    assert args.port == 1
    alone = argparse.ArgumentParser().add_subparsers(dest="command")
    register(alone)
    assert {"ingest-http", "publish"} <= set(alone.choices)


# -- the endpoint, no broker ------------------------------------------------------------------


def test_token_refused(server: BackgroundServer) -> None:
    for token in (None, "wrong-token-0123456789"):
        status, headers, body = post(server.url, json.dumps(SETUP).encode(), token=token)
        assert status == 401 and "Bearer" in headers["www-authenticate"]
        assert TOKEN not in json.dumps(body)


def test_oversized_body(server: BackgroundServer) -> None:
    status, _, body = post(server.url, b"\n".join([json.dumps(SETUP).encode()] * 100))
    assert status == 413 and "4096" in body["error"]


def test_all_invalid_is_422_and_nothing_produced(server: BackgroundServer) -> None:
    status, _, body = post(server.url, b'{"event_type": "NOPE"}\n[1]\n{"tick_ms": 7}')
    assert status == 422 and body["accepted"] == 0
    assert [(r["line"], r["category"]) for r in body["rejected"]] == [
        (1, "bad event_type"), (2, "undecodable"), (3, "tick")]
    status, _, body = post(server.url, b"   \n")
    assert status == 400 and "no events" in body["error"]


def test_kafka_unreachable_is_503_with_retry_after(server: BackgroundServer) -> None:
    status, headers, body = post(server.url, json.dumps(SETUP).encode())
    assert status == 503 and headers["retry-after"] == "3", body
    assert body["accepted"] == 0
    assert get(server.url, "/ready")[0] == 503
    assert get(server.url, "/health")[0] == 200
    status, metrics = get(server.url, "/metrics")
    assert 'cdr_ingest_http_requests_total{status="503"} 1.0' in metrics
