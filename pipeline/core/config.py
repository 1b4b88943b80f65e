"""Billing configuration: the TOML file of billing.md section 8, validated at load."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.core.decks import RateDeck, load_deck
from pipeline.core.events import SERVER_REASONS
from pipeline.core.money import ROUNDING_MODES
from pipeline.core.numbers import E164Patterns
from pipeline.errors import ConfigError

# Sections that belong to the runtime settings (pipeline/runtime/settings.py), not to billing.
RUNTIME_SECTIONS = frozenset({"kafka", "clickhouse", "topics", "worker", "sink", "dashboard"})
_BILLING_SECTIONS = frozenset({"policy", "rate_tables", "accounts", "gateways"})

# VOS3000 parameter names accepted in [policy] as aliases of ours.
VOS3000_ALIASES = MappingProxyType(
    {
        "SERVER_BILLING_RECORD_SERVER_HANG_UP": "record_server_hangup",
        "SERVER_BILLING_RECORD_ZERO_HOLD_TIME": "record_zero_hold_time",
        "SERVER_BILLING_RECORD_ILLEGAL_CALL": "record_illegal_call",
        "SERVER_BILLING_FEE_PRECISTION": "fee_precision",
        "SERVER_BILLING_FEE_PRECISION": "fee_precision",
        "SERVER_BILLING_HOLD_TIME_PRECISION": "hold_time_precision_ms",
        "SERVER_BILLING_FREE_TIME": "free_time_s",
        "SERVER_BILLING_GATEWAY_ROUTE_PREFIX": "gateway_route_prefix_billing",
        "SERVER_BILLING_FREE_E164S": "free_e164s",
        "SERVER_BILLING_NO_CDR_E164S": "no_cdr_e164s",
        "SS_MAXCALLDURATION": "max_call_duration_s",
    }
)


@dataclass(frozen=True, slots=True)
class Policy:
    record_server_hangup: bool = True
    record_server_hangup_by_reason: Mapping[str, bool] = field(
        default_factory=lambda: MappingProxyType({})
    )
    record_zero_hold_time: bool = True
    record_illegal_call: bool = True
    fee_precision: int = 2
    fee_rounding: str = "half_up"
    hold_time_precision_ms: int = 50
    free_time_s: int = 0
    gateway_route_prefix_billing: bool = True
    free_e164s: E164Patterns = field(default_factory=lambda: E164Patterns(()))
    no_cdr_e164s: E164Patterns = field(default_factory=lambda: E164Patterns(()))
    max_call_duration_s: int = 7200
    reorder_grace_s: int = 10
    closed_retention_s: int = 86400

    def records_server_hangup(self, reason: str | None) -> bool:
        if reason is not None and reason in self.record_server_hangup_by_reason:
            return self.record_server_hangup_by_reason[reason]
        return self.record_server_hangup


@dataclass(frozen=True, slots=True)
class RateTable:
    name: str
    currency: str
    deck: RateDeck


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str
    route_prefix: str | None
    rate_table: RateTable | None


@dataclass(frozen=True, slots=True)
class BillingConfig:
    policy: Policy
    rate_tables: Mapping[str, RateTable]
    accounts: Mapping[str, RateTable]  # account id -> its customer rate table
    gateways: Mapping[str, Gateway]
    tariff_version: str  # fingerprint of the policy and every deck's bytes
    source: str = "<memory>"


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise ConfigError(f"policy.{key}: expected true/false (or 1/0), got {value!r}")


def _int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"policy.{key}: expected a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"policy.{key}: must be {span}, got {value}")
    return value


def _patterns(key: str, value: Any) -> E164Patterns:
    if isinstance(value, str):  # VOS3000 style: "800*,888*"
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"policy.{key}: expected a list of number patterns, got {value!r}")
    for pattern in value:
        digits = pattern.removeprefix("+").removesuffix("*")
        if not (digits.isdigit() or (digits == "" and pattern.endswith("*"))):
            raise ConfigError(
                f"policy.{key}: {pattern!r} is not digits with an optional trailing *")
    return E164Patterns(value)


def _by_reason(value: Any) -> Mapping[str, bool]:
    if not isinstance(value, dict):
        raise ConfigError(
            "policy.record_server_hangup_by_reason: expected a table of REASON = bool")
    out = {}
    for reason, flag in value.items():
        if reason not in SERVER_REASONS:
            raise ConfigError(
                f"policy.record_server_hangup_by_reason.{reason}: unknown server reason "
                f"(known: {', '.join(sorted(SERVER_REASONS))})"
            )
        out[reason] = _bool(f"record_server_hangup_by_reason.{reason}", flag)
    return MappingProxyType(out)


def _rounding(key: str, value: Any) -> str:
    if not isinstance(value, str) or value not in ROUNDING_MODES:
        raise ConfigError(
            f"policy.{key}: must be one of {', '.join(ROUNDING_MODES)}, got {value!r}")
    return str(value)


_POLICY_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "record_server_hangup": _bool,
    "record_server_hangup_by_reason": lambda key, v: _by_reason(v),
    "record_zero_hold_time": _bool,
    "record_illegal_call": _bool,
    "fee_precision": lambda key, v: _int(key, v, 0, 6),
    "fee_rounding": _rounding,
    "hold_time_precision_ms": lambda key, v: _int(key, v, 0, 999),
    "free_time_s": lambda key, v: _int(key, v, 0),
    "gateway_route_prefix_billing": _bool,
    "free_e164s": _patterns,
    "no_cdr_e164s": _patterns,
    "max_call_duration_s": lambda key, v: _int(key, v, 1),
    "reorder_grace_s": lambda key, v: _int(key, v, 0),
    "closed_retention_s": lambda key, v: _int(key, v, 0),
}


def parse_policy(raw: Mapping[str, Any]) -> Policy:
    """Build a Policy from a [policy] table; VOS3000 names are accepted as aliases."""
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in raw.items():
        name = VOS3000_ALIASES.get(key, key)
        if name not in _POLICY_PARSERS:
            raise ConfigError(f"policy.{key}: unknown key")
        if name in values:
            raise ConfigError(f"policy.{key}: also given as policy.{given_as[name]}")
        values[name] = _POLICY_PARSERS[name](key, value)
        given_as[name] = key
    policy = Policy(**values)
    if policy.closed_retention_s < policy.reorder_grace_s:
        raise ConfigError("policy.closed_retention_s: must be at least policy.reorder_grace_s")
    return policy


def _table(raw: Any, where: str, known: frozenset[str] | None = None) -> dict[str, Any]:
    """`raw` as a table; with `known`, a table of those keys only."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    if known is not None:
        for key in raw:
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    return raw


def _rate_tables(raw: Any, base: Path, digest: Any) -> dict[str, RateTable]:
    tables = {}
    for name, body in sorted(_table(raw, "rate_tables").items()):
        where = f"rate_tables.{name}"
        body = _table(body, where, frozenset({"currency", "deck"}))
        currency = body.get("currency")
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
            raise ConfigError(
                f"{where}.currency: expected an ISO 4217 code like USD, got {currency!r}")
        deck_path = body.get("deck")
        if not isinstance(deck_path, str) or not deck_path:
            raise ConfigError(f"{where}.deck: expected the path of a CSV rate deck")
        path = (base / deck_path).resolve()
        if not path.is_file():
            raise ConfigError(f"{where}.deck: file {path} does not exist")
        digest.update(f"{name}\0{currency}\0".encode())
        digest.update(path.read_bytes())
        tables[name] = RateTable(name=name, currency=currency.upper(), deck=load_deck(path))
    return tables


def _reference(tables: Mapping[str, RateTable], value: Any, where: str) -> RateTable:
    if not isinstance(value, str) or value not in tables:
        raise ConfigError(f"{where}: rate table {value!r} is not defined under [rate_tables]")
    return tables[value]


def build_config(raw: Mapping[str, Any], base: Path, source: str = "<memory>") -> BillingConfig:
    """Validate a parsed TOML document; deck paths are relative to `base`."""
    for section in raw:
        if section not in _BILLING_SECTIONS | RUNTIME_SECTIONS:
            raise ConfigError(f"{section}: unknown section")
    policy_raw = _table(raw.get("policy", {}), "policy")
    policy = parse_policy(policy_raw)
    digest = hashlib.sha256(repr(sorted(policy_raw.items())).encode())
    tables = _rate_tables(raw.get("rate_tables", {}), base, digest)
    accounts = {}
    for account, body in _table(raw.get("accounts", {}), "accounts").items():
        where = f"accounts.{account}"
        body = _table(body, where, frozenset({"rate_table"}))
        accounts[account] = _reference(tables, body.get("rate_table"), f"{where}.rate_table")
        digest.update(f"a\0{account}\0{accounts[account].name}\0".encode())
    gateways = {}
    for name, body in _table(raw.get("gateways", {}), "gateways").items():
        where = f"gateways.{name}"
        body = _table(body, where, frozenset({"route_prefix", "rate_table"}))
        prefix = body.get("route_prefix")
        if prefix is not None and (not isinstance(prefix, str) or not prefix.isdigit()):
            raise ConfigError(f"{where}.route_prefix: expected digits, got {prefix!r}")
        table = body.get("rate_table")
        gateways[name] = Gateway(
            name=name,
            route_prefix=prefix or None,
            rate_table=(_reference(tables, table, f"{where}.rate_table")
                        if table is not None else None),
        )
        digest.update(f"g\0{name}\0{prefix}\0{table}\0".encode())
    return BillingConfig(
        policy=policy,
        rate_tables=MappingProxyType(tables),
        accounts=MappingProxyType(accounts),
        gateways=MappingProxyType(gateways),
        tariff_version=digest.hexdigest()[:16],
        source=source,
    )


def load_config(path: str | Path) -> BillingConfig:
    """Read the billing TOML file; every error names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return build_config(raw, path.resolve().parent, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
