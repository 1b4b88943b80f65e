"""The DDL templates render differently for ClickHouse 18.16 and current
servers; SQL text helpers (splitting, escaping, parameters) are strict."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from pipeline.storage.backend import insert_dedup_supported, supports
from pipeline.storage.cdr_store import CDR_COLUMNS, column_types_for, dedup_token_for
from pipeline.storage.ddl import render_ddl
from pipeline.storage.errors import MigrationError
from pipeline.storage.migrate import BOOTSTRAP_FILE, checksum_of, load_migrations, schema_dir
from pipeline.storage.sql import (
    param_text,
    placeholders,
    quote_literal,
    render_params,
    segments,
    split_statements,
)

OLD = (18, 16)
CURRENT = (26, 9)


def cdr_template() -> str:
    return (schema_dir() / "0001_cdr.sql").read_text()


def code_only(sql: str) -> str:
    """The SQL without its comments."""
    return "".join(text for kind, text in segments(sql) if kind != "comment")


def test_cdr_ddl_for_18_16_has_no_newer_features() -> None:
    sql = code_only(render_ddl(cdr_template(), OLD, "cdr", "0001_cdr.sql"))
    assert "LowCardinality" not in sql
    assert "non_replicated_deduplication_window" not in sql
    assert "INDEX" not in sql
    assert "DateTime64" not in sql
    assert re.search(r"^\s+status\s+String,$", sql, re.M)
    assert re.search(r"^\s+account_id\s+Nullable\(String\),$", sql, re.M)
    assert re.search(r"^\s+flags\s+Array\(String\),$", sql, re.M)


def test_cdr_ddl_for_current_uses_low_cardinality_and_dedup_window() -> None:
    sql = render_ddl(cdr_template(), CURRENT, "cdr", "0001_cdr.sql")
    assert re.search(r"^\s+status\s+LowCardinality\(String\),$", sql, re.M)
    assert re.search(r"^\s+account_id\s+LowCardinality\(Nullable\(String\)\),$", sql, re.M)
    assert "Array(LowCardinality(String))" in sql
    assert "non_replicated_deduplication_window = 10000" in sql
    assert "INDEX ix_account_id account_id TYPE bloom_filter" in sql


@pytest.mark.parametrize("version", [OLD, CURRENT])
def test_cdr_ddl_common_shape(version: tuple[int, int]) -> None:
    sql = render_ddl(cdr_template(), version, "billing_42", "0001_cdr.sql")
    assert "CREATE TABLE IF NOT EXISTS billing_42.cdr" in sql
    assert "ENGINE = ReplacingMergeTree(version)" in sql
    assert "PARTITION BY toYYYYMM(call_date)" in sql
    assert "ORDER BY (call_date, call_id)" in sql
    assert "Nullable(Decimal(18, 6))" in sql and "Nullable(Decimal(18, 8))" in sql
    assert "{{" not in sql and "}}" not in sql
    assert len(split_statements(sql)) == 1


def test_old_and_current_renderings_differ() -> None:
    assert render_ddl(cdr_template(), OLD, "cdr") != render_ddl(cdr_template(), CURRENT, "cdr")


@pytest.mark.parametrize("version", [OLD, (19, 3), (20, 3), (21, 5), (22, 2), CURRENT])
def test_every_schema_file_renders(version: tuple[int, int]) -> None:
    files = [schema_dir() / BOOTSTRAP_FILE] + [m.path for m in load_migrations()]
    assert [p.name for p in files][1:3] == ["0001_cdr.sql", "0002_rerate_runs.sql"]
    for path in files:
        sql = render_ddl(path.read_text(), version, "cdr", path.name)
        assert "{{" not in sql and "}}" not in sql
        statements = split_statements(sql)
        assert statements
        assert all(
            code_only(s).lstrip().upper().startswith(("CREATE", "ALTER")) for s in statements
        )


def test_cdr_columns_match_the_ddl() -> None:
    """CDR_COLUMNS (what the writer sends) is the 0001 column list, in order."""
    for version in (OLD, CURRENT):
        sql = render_ddl(cdr_template(), version, "cdr")
        declared = re.findall(r"^    (\w+)\s+(.+?)(?: DEFAULT .*| MATERIALIZED .*)?,?$", sql, re.M)
        insertable = [
            (n, t)
            for n, t in declared
            if n
            not in (
                "inserted_at",
                "call_date",
                "call_start",
                "setup_at",
                "answer_at",
                "end_at",
                "INDEX",
            )
        ]
        assert insertable == column_types_for(version)
    assert [n for n, _ in CDR_COLUMNS][:3] == ["call_id", "version", "call_start_ms"]


def test_ttl_marker_is_dropped_before_19_6() -> None:
    template = "ENGINE = MergeTree ORDER BY d {{TTL d + INTERVAL 7 YEAR}}"
    assert render_ddl(template, OLD, "x") == "ENGINE = MergeTree ORDER BY d "
    assert (
        render_ddl(template, (19, 6), "x")
        == "ENGINE = MergeTree ORDER BY d TTL d + INTERVAL 7 YEAR"
    )


def test_since_and_before_markers() -> None:
    template = "a{{since 21.5:, b}}{{before 21.5:, c}}"
    assert render_ddl(template, (21, 4), "x") == "a, c"
    assert render_ddl(template, (21, 5), "x") == "a, b"
    assert render_ddl(template, (26, 9), "x") == "a, b"


def test_low_cardinality_threshold() -> None:
    assert render_ddl("{{LowCardinality(String)}}", (19, 2), "x") == "String"
    assert render_ddl("{{LowCardinality(String)}}", (19, 3), "x") == "LowCardinality(String)"


def test_unknown_marker_and_bad_database_are_errors_naming_the_file() -> None:
    with pytest.raises(MigrationError, match="0009_x.sql.*unknown template marker"):
        render_ddl("CREATE {{Frobnicate(String)}}", CURRENT, "cdr", "0009_x.sql")
    with pytest.raises(MigrationError, match="0009_x.sql"):
        render_ddl("x {{db}}", CURRENT, "cdr; DROP", "0009_x.sql")
    with pytest.raises(MigrationError, match="unbalanced"):
        render_ddl("x }} y", CURRENT, "cdr", "0009_x.sql")


def test_feature_gates() -> None:
    assert not supports(OLD, "low_cardinality") and supports(CURRENT, "low_cardinality")
    assert not insert_dedup_supported(OLD) and insert_dedup_supported(CURRENT)
    assert not insert_dedup_supported((21, 8))  # window exists, token not yet
    with pytest.raises(ValueError):
        supports(CURRENT, "teleportation")


def test_checksum_ignores_line_endings() -> None:
    assert checksum_of("a;\nb;\n") == checksum_of("a;\r\nb;\r\n")
    assert checksum_of("a;\n") != checksum_of("a; \n")


# -- SQL helpers ---------------------------------------------------------------------


def test_split_statements_respects_literals_and_comments() -> None:
    script = """
    -- leading comment; not a statement
    CREATE TABLE t (s String DEFAULT ';') ENGINE = Memory;
    /* block; comment */
    INSERT INTO t VALUES ('a;b\\';c'), ("q;");
    SELECT 1 -- trailing; comment
    ;
    -- only a comment at the end;
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[0].startswith("-- leading comment") and statements[0].endswith("Memory")
    assert "'a;b\\';c'" in statements[1]
    assert statements[2].startswith("SELECT 1")


def test_unterminated_literal_is_an_error() -> None:
    with pytest.raises(ValueError, match="unterminated"):
        split_statements("SELECT 'abc")


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (None, "NULL"),
        (True, "1"),
        (-42, "-42"),
        ("plain", "'plain'"),
        ("O'Brien", "'O\\'Brien'"),
        ("back\\slash", "'back\\\\slash'"),
        ("\\'; DROP TABLE x; --", "'\\\\\\'; DROP TABLE x; --'"),
        ("tab\tnl\ncr\rnul\0bell\x07", "'tab\\tnl\\ncr\\rnul\\0bell\\x07'"),
        ("ünï€🙂", "'ünï€🙂'"),
        (Decimal("0.1920"), "'0.1920'"),
        (Decimal("1E-7"), "'0.0000001'"),
        (["a'b", 1, None], "['a\\'b', 1, NULL]"),
    ],
)
def test_quote_literal(value: object, literal: str) -> None:
    assert quote_literal(value) == literal


def test_quote_literal_refuses_floats_and_unknown_types() -> None:
    with pytest.raises(TypeError, match="float"):
        quote_literal(0.1)
    with pytest.raises(TypeError):
        quote_literal(object())
    with pytest.raises(ValueError):
        quote_literal(Decimal("NaN"))


def test_param_text_uses_escaped_format() -> None:
    assert param_text(None) == "\\N"
    assert param_text("\\N") == "\\\\N"
    assert param_text("a\tb\nc'd") == "a\\tb\\nc'd"
    assert param_text(Decimal("12.50")) == "12.50"
    assert param_text(["x'y"]) == "['x\\'y']"


def test_render_params_casts_escaped_literals_outside_quotes_only() -> None:
    sql = "SELECT '{a:String}', {a:String} -- {a:String}\nWHERE x = {b:Decimal(18, 6)}"
    assert placeholders(sql) == [("a", "String"), ("b", "Decimal(18, 6)")]
    rendered = render_params(sql, {"a": "x' OR 1=1 --", "b": Decimal("0.1920")})
    assert rendered == (
        "SELECT '{a:String}', CAST('x\\' OR 1=1 --' AS String) -- {a:String}\n"
        "WHERE x = CAST('0.1920' AS Decimal(18, 6))"
    )


def test_render_params_errors() -> None:
    with pytest.raises(ValueError, match="no value"):
        render_params("SELECT {a:String}", {"b": 1})
    with pytest.raises(ValueError, match="no params"):
        render_params("SELECT {a:String}", None)
    with pytest.raises(ValueError, match="invalid ClickHouse type"):
        render_params("SELECT {a:String) UNION SELECT (1}", {"a": 1})
    assert render_params("SELECT 1", None) == "SELECT 1"


def test_dedup_token_is_order_independent_and_content_sensitive() -> None:
    a = {"call_id": "a", "version": 1}
    b = {"call_id": "b", "version": 2}
    assert dedup_token_for([a, b]) == dedup_token_for([b, a])
    assert dedup_token_for([a, b]) != dedup_token_for([a, {"call_id": "b", "version": 3}])
    assert re.fullmatch(r"[0-9a-f]{64}", dedup_token_for([a]))
