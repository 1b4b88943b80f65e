"""SQL text helpers: a small lexer, strict value escaping, identifier checks.

Nothing here talks to a server. The lexer knows just enough ClickHouse SQL to
tell code from string literals, quoted identifiers and comments, so that
statement splitting and `{name:Type}` parameter substitution never look
inside a literal.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from pipeline.storage.errors import InvalidIdentifier

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# {name:Type}; Type may nest parentheses and carry quoted arguments: DateTime('UTC').
_PARAM = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^{}]+?)\s*\}")
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\([A-Za-z0-9_, ()'.]*\))?$")

_QUOTED_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
}
# The Escaped (TSV) text format used for server-side query parameter values.
_ESCAPED_ESCAPES = {
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
}


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return `name` if it is a plain ClickHouse identifier, else raise
    InvalidIdentifier (a StorageError and a ValueError).

    Database, table and column names go into SQL text unquoted, so only
    `[A-Za-z_][A-Za-z0-9_]*` is accepted."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise InvalidIdentifier(f"invalid {what} {name!r}: expected [A-Za-z_][A-Za-z0-9_]*")
    return name


def check_table(table: str) -> str:
    """Validate `name` or `database.name`; return it unchanged."""
    parts = table.split(".") if isinstance(table, str) else [table]
    if len(parts) not in (1, 2):
        raise InvalidIdentifier(f"invalid table name {table!r}")
    for part in parts:
        check_identifier(part, "table name")
    return table


def _escape(text: str, table: Mapping[str, str]) -> str:
    out: list[str] = []
    for ch in text:
        rep = table.get(ch)
        if rep is not None:
            out.append(rep)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"non-finite Decimal {value!r} cannot be stored")
    # fixed-point notation, never an exponent: Decimal("1E-7") -> "0.0000001"
    return format(value, "f")


def quote_literal(value: Any) -> str:
    """Render a Python value as a ClickHouse SQL literal.

    Accepted: None, bool, int, str, Decimal, date, datetime (naive = UTC, aware
    converted to UTC), list/tuple of those. Decimals become quoted strings so
    that no float parsing ever touches money: wrap them in CAST(... AS
    Decimal(p, s)) (render_params does). Floats are refused."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + _escape(value, _QUOTED_ESCAPES) + "'"
    if isinstance(value, Decimal):
        return "'" + _decimal_text(value) + "'"
    if isinstance(value, dt.datetime):
        return "'" + _datetime_text(value) + "'"
    if isinstance(value, dt.date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(quote_literal(v) for v in value) + "]"
    if isinstance(value, float):
        raise TypeError("floats are not accepted as SQL values (use Decimal or int)")
    raise TypeError(f"cannot render a {type(value).__name__} as a ClickHouse literal")


def _datetime_text(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def param_text(value: Any) -> str:
    """Render a value as the text of a server-side query parameter.

    ClickHouse parses `{name:Type}` parameter values in the Escaped (TSV)
    text format of Type: strings unquoted with backslash escapes, NULL as
    \\N, arrays in literal form."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _escape(value, _ESCAPED_ESCAPES)
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, dt.datetime):
        return _datetime_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        # Array text format: elements quoted as literals; escaped again for
        # the Escaped layer (a no-op unless control characters slipped in,
        # which quote_literal has already turned into escapes).
        return quote_literal(list(value))
    if isinstance(value, float):
        raise TypeError("floats are not accepted as SQL values (use Decimal or int)")
    raise TypeError(f"cannot render a {type(value).__name__} as a query parameter")


def check_type(type_name: str) -> str:
    """Validate a ClickHouse type name used in a `{name:Type}` placeholder."""
    if not _TYPE.match(type_name) or type_name.count("(") != type_name.count(")"):
        raise InvalidIdentifier(f"invalid ClickHouse type in query parameter: {type_name!r}")
    return type_name


# --- lexer --------------------------------------------------------------------


def segments(sql: str) -> Iterator[tuple[str, str]]:
    """Split SQL text into (kind, text) pieces, kind in
    {"code", "string", "quoted_ident", "comment"}. Raises ValueError on an
    unterminated literal or comment."""
    i = 0
    n = len(sql)
    start = 0
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            if start < i:
                yield "code", sql[start:i]
            end = sql.find("\n", i)
            end = n if end < 0 else end + 1
            yield "comment", sql[i:end]
            i = start = end
            continue
        if ch == "/" and sql.startswith("/*", i):
            if start < i:
                yield "code", sql[start:i]
            end = sql.find("*/", i + 2)
            if end < 0:
                raise ValueError(f"unterminated /* comment at offset {i}")
            yield "comment", sql[i : end + 2]
            i = start = end + 2
            continue
        if ch in "'\"`":
            if start < i:
                yield "code", sql[start:i]
            j = i + 1
            while True:
                if j >= n:
                    raise ValueError(f"unterminated {ch} literal at offset {i}")
                c = sql[j]
                if c == "\\":
                    j += 2
                    continue
                if c == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            yield ("string" if ch == "'" else "quoted_ident"), sql[i : j + 1]
            i = start = j + 1
            continue
        i += 1
    if start < n:
        yield "code", sql[start:n]


def split_statements(sql: str) -> list[str]:
    """Split a script on `;` that end statements (not inside literals or
    comments). Comment-only and empty statements are dropped; comments inside
    a statement are kept."""
    statements: list[str] = []
    current: list[str] = []
    has_code = False

    def flush() -> None:
        nonlocal has_code
        text = "".join(current).strip()
        if text and has_code:
            statements.append(text)
        current.clear()
        has_code = False

    for kind, text in segments(sql):
        if kind != "code":
            current.append(text)
            if kind != "comment":
                has_code = True
            continue
        parts = text.split(";")
        for k, part in enumerate(parts):
            if k > 0:
                flush()
            current.append(part)
            if part.strip():
                has_code = True
    flush()
    return statements


def placeholders(sql: str) -> list[tuple[str, str]]:
    """The (name, Type) of every `{name:Type}` placeholder outside literals."""
    found: list[tuple[str, str]] = []
    for kind, text in segments(sql):
        if kind == "code":
            found.extend((m.group(1), m.group(2)) for m in _PARAM.finditer(text))
    return found


def render_params(sql: str, params: Mapping[str, Any] | None) -> str:
    """Substitute `{name:Type}` placeholders client-side with
    `CAST(<literal> AS Type)`, for servers without server-side parameters
    (18.16). Placeholders inside literals and comments are left alone; a
    placeholder without a value is an error."""
    if not params:
        if placeholders(sql):
            raise ValueError("query has {name:Type} placeholders but no params were given")
        return sql
    out: list[str] = []
    for kind, text in segments(sql):
        if kind != "code":
            out.append(text)
            continue

        def sub(m: re.Match[str]) -> str:
            name, type_name = m.group(1), check_type(m.group(2))
            if name not in params:
                raise ValueError(f"no value for query parameter {name!r}")
            return f"CAST({quote_literal(params[name])} AS {type_name})"

        out.append(_PARAM.sub(sub, text))
    return "".join(out)


_CODE_RE = re.compile(r"Code:\s*(\d+)")


def error_code_from_text(text: str) -> int | None:
    """Pull `Code: NNN` out of a ClickHouse error message."""
    m = _CODE_RE.search(text)
    return int(m.group(1)) if m else None
