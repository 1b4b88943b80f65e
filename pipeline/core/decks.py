"""Rate decks: CSV rows of effective-dated prefixes, and a longest-prefix index."""

from __future__ import annotations

import csv
import decimal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from pipeline.core.money import to_units
from pipeline.core.numbers import normalize
from pipeline.errors import ConfigError

DECK_COLUMNS = (
    "prefix",
    "description",
    "rate_per_min",
    "first_increment_s",
    "next_increment_s",
    "connect_fee",
    "effective_from",
    "effective_to",
)
MAX_MONEY_PLACES = 8
_NEG_INF = -(2**63)
_POS_INF = 2**63 - 1


@dataclass(frozen=True, slots=True)
class DeckRow:
    prefix: str
    description: str
    rate_per_min: Decimal
    first_increment_s: int
    next_increment_s: int
    connect_fee: Decimal
    effective_from_ms: int  # inclusive; _NEG_INF when open
    effective_to_ms: int  # exclusive; _POS_INF when open
    line: int
    # The money as integer counts of 10^-8 (money.to_units) for money.charge_units;
    # None when a value has more places (a row built by hand), charged in Decimal then.
    rate_units: int | None = field(init=False, repr=False, compare=False)
    connect_units: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_units", to_units(self.rate_per_min))
        object.__setattr__(self, "connect_units", to_units(self.connect_fee))

    def effective_at(self, ts_ms: int) -> bool:
        return self.effective_from_ms <= ts_ms < self.effective_to_ms


class RateDeck:
    """Longest-prefix lookup over effective-dated rows.

    Rows are grouped by prefix in a dict; a lookup tries only the prefix lengths
    that exist in the deck, longest first, so its cost is bounded by the number
    of distinct lengths (about 15 for E.164), not by the deck size.
    """

    __slots__ = ("_by_prefix", "_lengths", "path", "row_count")

    def __init__(self, rows: list[DeckRow], path: str = "<memory>") -> None:
        self.path = path
        self.row_count = len(rows)
        grouped: dict[str, list[DeckRow]] = {}
        for row in rows:
            grouped.setdefault(row.prefix, []).append(row)
        for prefix, group in grouped.items():
            group.sort(key=lambda r: r.effective_from_ms)
            for before, after in zip(group, group[1:], strict=False):
                if after.effective_from_ms < before.effective_to_ms:
                    raise ConfigError(
                        f"{path}:{after.line}: prefix {prefix} overlaps the period of line "
                        f"{before.line}; effective periods of one prefix must not overlap"
                    )
        self._by_prefix = {p: tuple(g) for p, g in grouped.items()}
        self._lengths = tuple(sorted({len(p) for p in grouped}, reverse=True))

    def prefixes(self) -> tuple[str, ...]:
        """The distinct prefixes of the deck, sorted (whatever their effective periods)."""
        return tuple(sorted(self._by_prefix))

    def lookup(self, number: str, ts_ms: int) -> DeckRow | None:
        """The row of the longest prefix of `number` effective at `ts_ms`, or None."""
        size = len(number)
        by_prefix = self._by_prefix
        for length in self._lengths:
            if length > size:
                continue
            rows = by_prefix.get(number[:length])
            if rows is not None:
                for row in rows:
                    if row.effective_from_ms <= ts_ms < row.effective_to_ms:
                        return row
        return None


def _money(text: str, column: str, where: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except decimal.InvalidOperation:
        raise ConfigError(f"{where}: {column} {text!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{where}: {column} {text!r} must be a finite number >= 0")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_MONEY_PLACES:
        raise ConfigError(f"{where}: {column} {text!r} has more than {MAX_MONEY_PLACES} places")
    if value >= 10**12:
        raise ConfigError(f"{where}: {column} {text!r} is implausibly large")
    return value


def _seconds(text: str, column: str, where: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: {column} {text!r} is not a whole number of seconds") from None
    if value < minimum:
        raise ConfigError(f"{where}: {column} must be >= {minimum}, got {value}")
    return value


def parse_utc_ms(text: str, column: str, where: str) -> int:
    """ISO 8601 to epoch ms; a time without offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: {column} {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _row(record: dict[str, str], where: str, line: int) -> DeckRow:
    prefix = normalize((record["prefix"] or "").strip())
    if not prefix.isdigit() or not prefix.isascii():
        raise ConfigError(f"{where}: prefix {record['prefix']!r} must be digits")
    start = record["effective_from"] or ""
    end = record["effective_to"] or ""
    row = DeckRow(
        prefix=prefix,
        description=(record["description"] or "").strip(),
        rate_per_min=_money(record["rate_per_min"] or "", "rate_per_min", where),
        first_increment_s=_seconds(record["first_increment_s"] or "", "first_increment_s",
                                   where, 0),
        next_increment_s=_seconds(record["next_increment_s"] or "", "next_increment_s", where, 1),
        connect_fee=_money(record["connect_fee"] or "0", "connect_fee", where),
        effective_from_ms=(parse_utc_ms(start, "effective_from", where)
                           if start.strip() else _NEG_INF),
        effective_to_ms=parse_utc_ms(end, "effective_to", where) if end.strip() else _POS_INF,
        line=line,
    )
    if row.effective_to_ms <= row.effective_from_ms:
        raise ConfigError(f"{where}: effective_to must be after effective_from")
    return row


def load_deck(path: Path) -> RateDeck:
    """Read and validate a deck CSV; errors name the file and line."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read rate deck: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = tuple(name.strip() for name in (reader.fieldnames or ()))
            if header != DECK_COLUMNS:
                raise ConfigError(
                    f"{path}:1: header must be {','.join(DECK_COLUMNS)}, got {','.join(header)}"
                )
            reader.fieldnames = list(DECK_COLUMNS)
            rows = []
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record or any(record[c] is None for c in DECK_COLUMNS):
                    raise ConfigError(f"{where}: expected {len(DECK_COLUMNS)} columns")
                rows.append(_row(record, where, reader.line_num))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        except csv.Error as exc:
            where = f"{path}: not valid CSV after line {reader.line_num}"
            raise ConfigError(f"{where}: {exc}") from None
    return RateDeck(rows, str(path))
