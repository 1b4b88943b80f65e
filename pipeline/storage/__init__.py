"""ClickHouse storage: backends (server via clickhouse-driver, embedded chDB),
schema migrations, and the CDR store.

The backends are imported lazily (`pipeline.storage.native`,
`pipeline.storage.embedded`) so that importing this package needs neither
clickhouse-driver nor chdb.
"""

from pipeline.storage.backend import (
    FEATURE_SINCE,
    ClickHouseBackend,
    ServerVersion,
    insert_dedup_supported,
    supports,
)
from pipeline.storage.cdr_store import (
    CDR_COLUMNS,
    CDR_FIELDS,
    dedup_token_for,
    fetch_newest,
    insert_cdrs,
)
from pipeline.storage.errors import (
    InvalidIdentifier,
    MigrationError,
    StorageError,
    StorageUnavailable,
)
from pipeline.storage.migrate import migrate

__all__ = [
    "CDR_COLUMNS",
    "CDR_FIELDS",
    "FEATURE_SINCE",
    "InvalidIdentifier",
    "ClickHouseBackend",
    "MigrationError",
    "ServerVersion",
    "StorageError",
    "StorageUnavailable",
    "dedup_token_for",
    "fetch_newest",
    "insert_cdrs",
    "insert_dedup_supported",
    "migrate",
    "supports",
]
