-- 0004: history of re-rated CDRs (docs/rerating.md).
--
-- `cdr` is a ReplacingMergeTree(version): a merge drops every version of a call
-- but the newest, so it cannot be where billing looks up what a call was billed
-- before a re-rating. Before a re-rating writes a new version of a call, it
-- copies the version it supersedes here, with the run that superseded it
-- (`run_id`, see `rerate_runs`), the version that replaced it (`new_version`)
-- and the fields that differ (`changed_fields`). The columns after those are
-- the superseded row of `cdr` as it was, including its own `tariff_version`
-- and `rerate_run_id` (empty when the live pipeline wrote it).
--
-- Engine: ReplacingMergeTree keyed by (call, superseded version). A version is
-- superseded once, so distinct history rows never collapse; what collapses is
-- the same supersession written twice (a re-rating re-run after a crash
-- between its history insert and its cdr insert, or a retried batch on
-- servers without insert deduplication). Read it with FINAL for exact counts.
-- Partitioned like `cdr` (month of the call's start), so retention is the
-- same DROP PARTITION.
CREATE TABLE IF NOT EXISTS {{db}}.cdr_history
(
    run_id           {{LowCardinality(String)}},
    new_version      UInt64,
    changed_fields   Array({{LowCardinality(String)}}),
    superseded_at    DateTime('UTC') DEFAULT now(),
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
    call_date        Date MATERIALIZED toDate(toDateTime(intDiv(call_start_ms, 1000)), 'UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(call_date)
ORDER BY (call_date, call_id, version)
SETTINGS index_granularity = 8192{{since 21.5:, non_replicated_deduplication_window = 1000}};
