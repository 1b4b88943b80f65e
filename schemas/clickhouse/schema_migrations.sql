-- Bootstrap table of the migrator (pipeline/storage/migrate.py), created
-- before any numbered migration runs. Not itself a numbered migration: the
-- migrator must be able to read it to know which migrations are applied.
-- One row per applied migration file; checksum is the sha256 of the file
-- text (template, not rendered SQL), so editing an applied file is caught.
CREATE TABLE IF NOT EXISTS {{db}}.schema_migrations
(
    version         UInt32,
    name            String,
    checksum        String,
    applied_at      DateTime('UTC') DEFAULT now(),
    server_version  String DEFAULT '',
    statements      UInt32 DEFAULT 0
)
ENGINE = ReplacingMergeTree()
ORDER BY version;
