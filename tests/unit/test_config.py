"""Configuration and rate-deck loading: every error names the key or file:line
(billing.md sections 4, 7 and 8), VOS3000 aliases, defaults, and the CLI's exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import VOS3000_ALIASES, Policy, load_config, parse_policy
from pipeline.core.decks import load_deck
from pipeline.errors import ConfigError
from tests.paths import EXAMPLE

HEADER = (
    "prefix,description,rate_per_min,first_increment_s,next_increment_s,connect_fee,"
    "effective_from,effective_to\n"
)
GOOD_DECK = HEADER + "44,UK,0.0500,60,60,0,,\n1,USA,0.0100,6,6,0.0150,,\n"
TABLES = """
[rate_tables.retail]
currency = "USD"
deck = "retail.csv"

[accounts.acme]
rate_table = "retail"
"""
CLI = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cdr-pipeline"


def write(tmp: Path, toml: str, deck: str | None = GOOD_DECK) -> Path:
    if deck is not None:
        (tmp / "retail.csv").write_text(deck)
    path = tmp / "billing.toml"
    path.write_text(toml)
    return path


def load_error(tmp: Path, toml: str, deck: str | None = GOOD_DECK) -> str:
    path = write(tmp, toml, deck)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message  # every load error names the file
    return message


def deck_error(tmp: Path, rows: str, header: str = HEADER) -> str:
    message = load_error(tmp, TABLES, header + rows)
    assert str(tmp / "retail.csv") in message  # ... and a deck error names the deck
    return message


def policy(tmp: Path, body: str) -> Policy:
    return load_config(write(tmp, "[policy]\n" + body + "\n" + TABLES)).policy


# -- the configuration file ---------------------------------------------------------


def test_the_worked_example_loads() -> None:
    config = load_config(EXAMPLE / "config.toml")
    assert config.policy.fee_precision == 4
    assert dict(config.policy.record_server_hangup_by_reason) == {"ADMIN": False}
    assert config.gateways["out-a"].rate_table is config.rate_tables["vendor-a"]


def test_unknown_policy_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[policy]\nrecord_server_hang_up = true\n" + TABLES)
    assert "policy.record_server_hang_up: unknown key" in message


def test_unknown_section(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[polcy]\nfee_precision = 2\n" + TABLES)
    assert "polcy: unknown section" in message


@pytest.mark.parametrize("value", [7, -1])
def test_fee_precision_out_of_range(tmp_path: Path, value: int) -> None:
    message = load_error(tmp_path, f"[policy]\nfee_precision = {value}\n" + TABLES)
    assert "policy.fee_precision" in message and "0..6" in message and str(value) in message


def test_hold_time_precision_out_of_range(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[policy]\nhold_time_precision_ms = 1000\n" + TABLES)
    assert "policy.hold_time_precision_ms" in message and "0..999" in message


def test_bad_fee_rounding(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[policy]\nfee_rounding = "bankers"\n' + TABLES)
    assert "policy.fee_rounding" in message and "'bankers'" in message
    assert "half_up" in message and "half_even" in message  # lists what is allowed


@pytest.mark.parametrize("key", ["record_server_hangup", "fee_precision", "free_e164s"])
def test_bad_value_types_name_the_key(tmp_path: Path, key: str) -> None:
    message = load_error(tmp_path, f"[policy]\n{key} = {{ a = 1 }}\n" + TABLES)
    assert f"policy.{key}" in message


def test_account_naming_an_undefined_rate_table(tmp_path: Path) -> None:
    message = load_error(tmp_path, TABLES + '\n[accounts.globex]\nrate_table = "wholesale"\n')
    assert "accounts.globex.rate_table" in message and "'wholesale'" in message


def test_gateway_naming_an_undefined_rate_table(tmp_path: Path) -> None:
    toml = TABLES + '\n[gateways.gw-uk-1]\nroute_prefix = "999"\nrate_table = "vendor-b"\n'
    message = load_error(tmp_path, toml)
    assert "gateways.gw-uk-1.rate_table" in message and "'vendor-b'" in message


def test_gateway_without_rate_table_is_fine(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TABLES + '\n[gateways.in]\nroute_prefix = "777"\n'))
    assert config.gateways["in"].rate_table is None
    assert config.gateways["in"].route_prefix == "777"


def test_deck_file_missing(tmp_path: Path) -> None:
    message = load_error(tmp_path, TABLES, deck=None)
    assert "rate_tables.retail.deck" in message and "retail.csv" in message
    assert "does not exist" in message


def test_toml_syntax_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[policy]\nfee_precision = 4\nfee_rounding = half_up\n")
    assert "not valid TOML" in message and "line 3" in message


def test_unknown_server_reason_in_by_reason_table(tmp_path: Path) -> None:
    toml = "[policy.record_server_hangup_by_reason]\nADMIN = false\nLUNCH = false\n" + TABLES
    message = load_error(tmp_path, toml)
    assert "policy.record_server_hangup_by_reason.LUNCH" in message
    assert "unknown server reason" in message


def test_by_reason_table_is_read(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        "record_server_hangup = false\n[policy.record_server_hangup_by_reason]\n"
        "CREDIT_EXHAUSTED = true",
    )
    assert p.records_server_hangup("CREDIT_EXHAUSTED") is True
    assert p.records_server_hangup("ADMIN") is False
    assert p.records_server_hangup(None) is False


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[policy]\nfee_rounding = ["half_up"]\n' + TABLES, "policy.fee_rounding"),
        (TABLES + '\n[accounts.globex]\nrate_table = ["retail"]\n', "accounts.globex.rate_table"),
        (TABLES + "\n[gateways.gw]\nrate_table = { name = 1 }\n", "gateways.gw.rate_table"),
        ("policy = 3\n" + TABLES, "policy: expected a table"),
        ("accounts = 3\n", "accounts: expected a table"),
        ('gateways = "gw"\n', "gateways: expected a table"),
        ("rate_tables = [1, 2]\n", "rate_tables: expected a table"),
        ("[policy]\nrecord_server_hangup_by_reason = 3\n", "policy.record_server_hangup_by_reason"),
    ],
)
def test_values_of_the_wrong_shape_are_config_errors(tmp_path: Path, toml: str, key: str) -> None:
    """Regression: unhashable values (a list where a name belongs) and sections that are
    not tables raised TypeError (a traceback from the CLI) instead of ConfigError."""
    assert key in load_error(tmp_path, toml)


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "billing.toml"
    path.write_bytes(b'[policy]\nfee_rounding = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# -- the rate decks ---------------------------------------------------------------


def test_deck_bad_header(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,60,0,,\n", header="prefix,desc,rate\n")
    assert "retail.csv:1:" in message and "header" in message


def test_deck_bad_rate(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,60,0,,\n1,USA,abc,6,6,0,,\n")
    assert "retail.csv:3:" in message and "rate_per_min" in message and "'abc'" in message


def test_deck_negative_rate(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,-0.05,60,60,0,,\n")
    assert "retail.csv:2:" in message and "rate_per_min" in message and ">= 0" in message


def test_deck_negative_connect_fee(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,60,-1,,\n")
    assert "retail.csv:2:" in message and "connect_fee" in message


def test_deck_next_increment_zero(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,0,0,,\n")
    assert "retail.csv:2:" in message and "next_increment_s" in message and ">= 1" in message


def test_deck_bad_date(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,60,0,2025-13-45,\n")
    assert "retail.csv:2:" in message and "effective_from" in message and "2025-13-45" in message


def test_deck_bad_prefix(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44x,UK,0.05,60,60,0,,\n")
    assert "retail.csv:2:" in message and "prefix" in message


def test_deck_wrong_column_count(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,60\n")
    assert "retail.csv:2:" in message and "columns" in message


def test_deck_not_utf8(tmp_path: Path) -> None:
    """Regression: a Latin-1 deck raised UnicodeDecodeError (a traceback from the CLI)."""
    (tmp_path / "retail.csv").write_bytes(
        (HEADER + "33,France m\xe9tropole,0.02,1,1,0,,\n").encode("latin-1")
    )
    message = load_error(tmp_path, TABLES, deck=None)
    assert "retail.csv" in message and "not UTF-8" in message


def test_deck_not_csv(tmp_path: Path) -> None:
    """Regression: csv.Error (a field over the csv module's size limit) escaped as is."""
    message = deck_error(tmp_path, '44,"' + "x" * 200_000 + '",0.05,60,60,0,,\n')
    assert "not valid CSV" in message


def test_deck_overlapping_periods_for_one_prefix(tmp_path: Path) -> None:
    rows = (
        "447,UK mobile,0.12,30,6,0,,2025-11-24T18:00:00Z\n"
        "447,UK mobile,0.09,30,6,0,2025-11-24T17:59:59Z,\n"
    )
    message = deck_error(tmp_path, rows)
    assert "retail.csv:3:" in message and "447" in message and "overlaps" in message
    assert "line 2" in message


def test_deck_open_ended_rows_for_one_prefix_overlap(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,60,0,,\n44,UK,0.06,60,60,0,,\n")
    assert "retail.csv:3:" in message and "overlaps" in message


def test_deck_adjacent_periods_are_accepted(tmp_path: Path) -> None:
    rows = (
        "447,UK mobile,0.09,30,6,0,2025-11-24T18:00:00Z,\n"  # out of order on purpose
        "447,UK mobile,0.12,30,6,0,,2025-11-24T18:00:00Z\n"
        "44,UK,0.05,60,60,0,,\n"
    )
    (tmp_path / "retail.csv").write_text(HEADER + rows)
    deck = load_deck(tmp_path / "retail.csv")
    switch = 1_764_007_200_000  # 2025-11-24T18:00:00Z
    assert str(deck.lookup("447700900123", switch - 1).rate_per_min) == "0.12"  # type: ignore[union-attr]
    assert str(deck.lookup("447700900123", switch).rate_per_min) == "0.09"  # type: ignore[union-attr]


def test_deck_effective_to_not_after_from(tmp_path: Path) -> None:
    message = deck_error(tmp_path, "44,UK,0.05,60,60,0,2025-01-02T00:00:00Z,2025-01-01T00:00:00Z\n")
    assert "retail.csv:2:" in message and "effective_to" in message


# -- VOS3000 aliases ----------------------------------------------------------------


def test_vos3000_record_server_hangup_1_and_0(tmp_path: Path) -> None:
    assert policy(tmp_path, "SERVER_BILLING_RECORD_SERVER_HANG_UP = 1").record_server_hangup is True
    assert (
        policy(tmp_path, "SERVER_BILLING_RECORD_SERVER_HANG_UP = 0").record_server_hangup is False
    )


# A value for each key that differs from its default, as a VOS3000 operator writes it.
ALIAS_VALUES: dict[str, tuple[str, Any]] = {
    "record_server_hangup": ("0", False),
    "record_zero_hold_time": ("0", False),
    "record_illegal_call": ("0", False),
    "fee_precision": ("4", 4),
    "hold_time_precision_ms": ("100", 100),
    "free_time_s": ("5", 5),
    "gateway_route_prefix_billing": ("0", False),
    "free_e164s": ('"800*,888*"', ("800*", "888*")),
    "no_cdr_e164s": ('"999*"', ("999*",)),
    "max_call_duration_s": ("3600", 3600),
}


@pytest.mark.parametrize(("alias", "key"), sorted(VOS3000_ALIASES.items()))
def test_every_vos3000_alias_sets_its_key(tmp_path: Path, alias: str, key: str) -> None:
    text, want = ALIAS_VALUES[key]
    value = getattr(policy(tmp_path, f"{alias} = {text}"), key)
    default = getattr(Policy(), key)
    if key.endswith("e164s"):
        value, default = value.patterns, default.patterns
    assert value == want
    assert default != want  # else an alias that is silently ignored would pass


def test_spec_vos3000_names_are_all_aliases() -> None:
    """Every VOS3000 twin named in billing.md section 7 is accepted."""
    spec = {
        "SERVER_BILLING_RECORD_SERVER_HANG_UP": "record_server_hangup",
        "SERVER_BILLING_RECORD_ZERO_HOLD_TIME": "record_zero_hold_time",
        "SERVER_BILLING_RECORD_ILLEGAL_CALL": "record_illegal_call",
        "SERVER_BILLING_FEE_PRECISTION": "fee_precision",
        "SERVER_BILLING_HOLD_TIME_PRECISION": "hold_time_precision_ms",
        "SERVER_BILLING_FREE_TIME": "free_time_s",
        "SERVER_BILLING_GATEWAY_ROUTE_PREFIX": "gateway_route_prefix_billing",
        "SERVER_BILLING_FREE_E164S": "free_e164s",
        "SERVER_BILLING_NO_CDR_E164S": "no_cdr_e164s",
        "SS_MAXCALLDURATION": "max_call_duration_s",
    }
    for alias, key in spec.items():
        assert VOS3000_ALIASES[alias] == key


def test_vos3000_free_e164s_comma_string(tmp_path: Path) -> None:
    p = policy(tmp_path, 'SERVER_BILLING_FREE_E164S = "800*,888*"')
    assert p.free_e164s.patterns == ("800*", "888*")
    assert p.free_e164s.matches("8005551234") and p.free_e164s.matches("888")
    assert not p.free_e164s.matches("8775551234")


def test_free_e164s_bad_pattern(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[policy]\nfree_e164s = ["80*0"]\n' + TABLES)
    assert "policy.free_e164s" in message and "'80*0'" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SERVER_BILLING_FEE_PRECISTION = 3", "fee_precision = 4"),
        ("fee_precision = 4", "SERVER_BILLING_FEE_PRECISTION = 3"),
        ("SERVER_BILLING_FEE_PRECISTION = 3", "SERVER_BILLING_FEE_PRECISION = 3"),
        ("record_server_hangup = true", "SERVER_BILLING_RECORD_SERVER_HANG_UP = 1"),
    ],
)
def test_alias_and_canonical_key_both_given(tmp_path: Path, first: str, second: str) -> None:
    message = load_error(tmp_path, f"[policy]\n{first}\n{second}\n" + TABLES)
    for given in (first, second):
        assert "policy." + given.split(" =")[0] in message


# -- defaults -----------------------------------------------------------------------

# billing.md section 7.
SPEC_DEFAULTS: dict[str, Any] = {
    "record_server_hangup": True,
    "record_server_hangup_by_reason": {},
    "record_zero_hold_time": True,
    "record_illegal_call": True,
    "fee_precision": 2,
    "fee_rounding": "half_up",
    "hold_time_precision_ms": 50,
    "free_time_s": 0,
    "gateway_route_prefix_billing": True,
    "free_e164s": (),
    "no_cdr_e164s": (),
    "max_call_duration_s": 7200,
    "reorder_grace_s": 10,
    "closed_retention_s": 86400,
}


def _plain(policy: Policy) -> dict[str, Any]:
    out = {}
    for key in SPEC_DEFAULTS:
        value = getattr(policy, key)
        if key.endswith("e164s"):
            value = value.patterns
        elif key == "record_server_hangup_by_reason":
            value = dict(value)
        out[key] = value
    return out


def test_defaults_equal_the_spec_table(tmp_path: Path) -> None:
    assert set(Policy.__dataclass_fields__) == set(SPEC_DEFAULTS)
    assert _plain(Policy()) == SPEC_DEFAULTS
    assert _plain(parse_policy({})) == SPEC_DEFAULTS
    assert _plain(load_config(write(tmp_path, TABLES)).policy) == SPEC_DEFAULTS  # no [policy]


# -- the CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[policy]\nfee_precision = 7\n" + TABLES, "policy.fee_precision"),
        (TABLES + '\n[accounts.globex]\nrate_table = "nope"\n', "accounts.globex.rate_table"),
        ("[policy]\nfee_rounding = half_up\n", "not valid TOML"),
    ],
)
def test_cli_rate_file_with_bad_config_exits_2_with_one_line(
    tmp_path: Path, toml: str, key: str
) -> None:
    if not CLI.exists():
        pytest.skip(f"{CLI} not installed")
    config = write(tmp_path, toml)
    events = tmp_path / "events.jsonl"
    events.write_text("")
    result = subprocess.run(
        [
            str(CLI),
            "rate-file",
            "--config",
            str(config),
            "--events",
            str(events),
            "--out",
            str(tmp_path / "out.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cdr-pipeline rate-file: error:")
    assert key in lines[0] and str(config) in lines[0]
    assert result.stdout == ""


def test_cli_module_entry_point_matches(tmp_path: Path) -> None:
    """The same through `python -m pipeline.cli` (what the console script calls)."""
    config = write(tmp_path, "[policy]\nbogus = 1\n" + TABLES)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "rate-file",
            "--config",
            str(config),
            "--events",
            str(config),
            "--out",
            str(tmp_path / "out.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "policy.bogus: unknown key" in result.stderr
