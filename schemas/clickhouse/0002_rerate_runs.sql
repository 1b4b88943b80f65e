-- 0002: audit trail of re-rating runs. One logical row per run_id; the
-- writer inserts it at start (status RUNNING, revision 1) and again when the
-- run ends (DONE / FAILED, revision 2, counts filled in); read with FINAL.
-- The CDRs a run writes carry its run_id in cdr.rerate_run_id.
CREATE TABLE IF NOT EXISTS {{db}}.rerate_runs
(
    run_id              String,
    revision            UInt32,
    started_at          DateTime('UTC'),
    finished_at         Nullable(DateTime('UTC')),
    user                String,
    config_fingerprint  String,
    from_ms             Int64,
    to_ms               Int64,
    accounts            Array(String),
    source              {{LowCardinality(String)}},
    status              {{LowCardinality(String)}},
    calls_read          UInt64 DEFAULT 0,
    calls_rerated       UInt64 DEFAULT 0,
    calls_changed       UInt64 DEFAULT 0,
    cdrs_written        UInt64 DEFAULT 0,
    errors              UInt64 DEFAULT 0,
    delta_summary       String DEFAULT '{}',
    error_message       String DEFAULT '',
    updated_at          DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY run_id;
