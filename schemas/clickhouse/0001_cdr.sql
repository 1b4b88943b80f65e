-- 0001: rated CDRs, one row per (call_id, version); the newest version of a
-- call is the truth (read with FINAL or argMax(..., version)).
--
-- Keys (see docs/clickhouse.md):
--  * ReplacingMergeTree(version) collapses rows with the SAME SORTING KEY,
--    keeping the highest version. Every sorting-key column must therefore be
--    identical across all versions of a call. call_id is; call_start_ms is
--    written by the writer as coalesce(setup_ts_ms, answer_ts_ms, end_ts_ms)
--    of the first version and carried unchanged to later ones. account_id,
--    status, switch_id... are NOT safe in the key: a correction can add a
--    SETUP and change them, and the old row would then never be replaced.
--  * PARTITION BY month of call_date (derived from call_start_ms only) puts
--    every version of a call in one partition, so background merges can
--    collapse them; months also make retention (DROP PARTITION) cheap.
--  * ORDER BY (call_date, call_id): dashboards filter on time ranges first;
--    call_id last makes the key unique per call.
--
-- Times are UTC epoch milliseconds (Int64; 18.16 has no DateTime64); the
-- *_at / call_date columns are second-resolution DateTime('UTC') / Date
-- views of them, computed by the server (MATERIALIZED: not insertable, not
-- in SELECT *). Money is Decimal, never Float.
CREATE TABLE IF NOT EXISTS {{db}}.cdr
(
    call_id          String,
    version          UInt64,
    call_start_ms    Int64,
    status           {{LowCardinality(String)}},
    record_decision  {{LowCardinality(String)}},
    decision_reason  {{LowCardinality(Nullable(String))}},
    billing_mode     {{LowCardinality(String)}},
    account_id       {{LowCardinality(Nullable(String))}},
    caller           Nullable(String),
    callee           Nullable(String),
    callee_gateway   Nullable(String),
    ingress_gateway  {{LowCardinality(Nullable(String))}},
    egress_gateway   {{LowCardinality(Nullable(String))}},
    switch_id        {{LowCardinality(String)}},
    setup_ts_ms      Nullable(Int64),
    answer_ts_ms     Nullable(Int64),
    end_ts_ms        Nullable(Int64),
    pdd_ms           Nullable(Int64),
    answered         UInt8,
    hold_ms          Int64,
    hold_s           Int64,
    rated_s          Int64,
    billable_s       Nullable(Int64),
    hangup_source    {{LowCardinality(String)}},
    sip_code         Nullable(Int32),
    q850_cause       Nullable(Int32),
    server_reason    {{LowCardinality(Nullable(String))}},
    illegal_reason   {{LowCardinality(Nullable(String))}},
    rate_table       {{LowCardinality(Nullable(String))}},
    rate_prefix      Nullable(String),
    rate_per_min     Nullable(Decimal(18, 8)),
    currency         {{LowCardinality(Nullable(String))}},
    fee              Nullable(Decimal(18, 6)),
    cost_rate_table  {{LowCardinality(Nullable(String))}},
    cost_prefix      Nullable(String),
    cost             Nullable(Decimal(18, 6)),
    cost_currency    {{LowCardinality(Nullable(String))}},
    tariff_version   {{LowCardinality(String)}},
    flags            Array({{LowCardinality(String)}}),
    rerate_run_id    {{LowCardinality(String)}} DEFAULT '',
    inserted_at      DateTime('UTC') DEFAULT now(),
    call_date        Date MATERIALIZED toDate(toDateTime(intDiv(call_start_ms, 1000)), 'UTC'),
    call_start       DateTime('UTC') MATERIALIZED toDateTime(intDiv(call_start_ms, 1000), 'UTC'),
    setup_at         Nullable(DateTime('UTC')) MATERIALIZED toDateTime(intDiv(setup_ts_ms, 1000), 'UTC'),
    answer_at        Nullable(DateTime('UTC')) MATERIALIZED toDateTime(intDiv(answer_ts_ms, 1000), 'UTC'),
    end_at           Nullable(DateTime('UTC')) MATERIALIZED toDateTime(intDiv(end_ts_ms, 1000), 'UTC'){{since 20.3:,
    INDEX ix_account_id account_id TYPE bloom_filter(0.01) GRANULARITY 4}}
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(call_date)
ORDER BY (call_date, call_id)
SETTINGS index_granularity = 8192{{since 21.5:, non_replicated_deduplication_window = 10000}};
