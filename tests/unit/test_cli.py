"""Every subcommand is reachable and documented; rate-file runs end to end as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import EXAMPLE

EXE = Path(sys.executable).with_name("cdr-pipeline")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_the_commands() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for command in ("rate-file", "worker", "sink", "simulate", "db", "demo"):
        assert command in out.stdout


@pytest.mark.parametrize("command", ["rate-file", "worker", "sink", "simulate", "db", "demo"])
def test_each_command_has_help(command: str) -> None:
    out = _run(command, "--help")
    assert out.returncode == 0 and "usage: cdr-pipeline" in out.stdout and len(out.stdout) > 200


def test_rate_file_as_a_user_runs_it(tmp_path: Path) -> None:
    out = _run("rate-file", "--config", str(EXAMPLE / "config.toml"), "--events",
               str(EXAMPLE / "events.jsonl"), "--out", str(tmp_path / "cdrs.jsonl"),
               "--rejects", str(tmp_path / "rejects.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "rejected         2" in out.stderr and "revenue USD" in out.stderr
    cdrs = [json.loads(line) for line in (tmp_path / "cdrs.jsonl").read_text().splitlines()]
    assert all(c["fee"] is None or isinstance(c["fee"], str) for c in cdrs)  # money as strings
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 2
    newest: dict[str, dict[str, object]] = {}
    for cdr in cdrs:
        if cdr["version"] > newest.get(cdr["call_id"], {"version": 0})["version"]:  # type: ignore[operator]
            newest[cdr["call_id"]] = cdr
    expected = [json.loads(line) for line in (EXAMPLE / "expected.jsonl").read_text().splitlines()]
    assert sorted(newest) == [want["call_id"] for want in expected]
    for want in expected:
        assert {k: newest[want["call_id"]][k] for k in want} == want, want["call_id"]


def test_rate_file_reads_an_empty_device(tmp_path: Path) -> None:
    out = _run("rate-file", "--config", str(EXAMPLE / "config.toml"), "--events", "/dev/null",
               "--out", str(tmp_path / "o.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "does not exist" not in out.stderr and (tmp_path / "o.jsonl").read_text() == ""


def test_events_directory_is_a_clear_error(tmp_path: Path) -> None:
    out = _run("rate-file", "--config", str(EXAMPLE / "config.toml"), "--events", str(tmp_path),
               "--out", str(tmp_path / "o.jsonl"))
    assert out.returncode == 2
    assert "is a directory" in out.stderr and "Traceback" not in out.stderr


def test_missing_events_file_is_a_clear_error(tmp_path: Path) -> None:
    out = _run("rate-file", "--config", str(EXAMPLE / "config.toml"), "--events",
               str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl"))
    assert out.returncode == 2
    assert "nope.jsonl does not exist" in out.stderr and "Traceback" not in out.stderr


def test_db_migrate_on_embedded_chdb_twice(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'ch'}"
    first = _run("db", "migrate", "--clickhouse", url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_cdr.sql" in first.stdout
    second = _run("db", "migrate", "--clickhouse", url)
    assert second.returncode == 0 and "schema is current" in second.stdout


def test_bad_runtime_setting_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text((EXAMPLE / "config.toml").read_text().replace(
        "[policy]", "[kafka]\nbootstrapp = 'x'\n\n[policy]") )
    (tmp_path / "decks").symlink_to(EXAMPLE / "decks")
    out = _run("db", "migrate", "--config", str(config), "--clickhouse", f"chdb://{tmp_path / 'ch'}")
    assert out.returncode == 2 and "kafka.bootstrapp: unknown key" in out.stderr


def test_unreachable_clickhouse_is_one_line_without_a_traceback() -> None:
    from tests.ports import free_port

    out = _run("db", "migrate", "--clickhouse", f"native://127.0.0.1:{free_port()}/cdr")
    assert out.returncode == 2
    assert "Connection refused" in out.stderr and "Traceback" not in out.stderr
