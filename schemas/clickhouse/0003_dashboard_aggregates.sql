-- 0003: what the dashboards and the `report` command read
-- (written by pipeline/dashboard/refresh.py; see docs/dashboards.md).
--
-- Why not materialized views: a view on INSERT sees each CDR version as it
-- arrives and cannot take back the figures of the version it supersedes, so
-- a re-rated call would count twice. Instead a refresher recomputes whole
-- UTC days from `cdr FINAL` (each call once, in its newest version) for the
-- days that received CDR versions since its last run (cdr.inserted_at), and
-- swaps each recomputed day in with ALTER TABLE ... REPLACE PARTITION: one
-- atomic step per day and table, so a reader sees the old day or the new
-- day, never a mix, and a group that a re-rating emptied vanishes with the
-- old day. Readers need neither FINAL nor refresh versions.
--
-- Measures, the same columns in both tables (sums, so any rows add up):
--   attempts     calls
--   answered     answered calls
--   recorded     calls with record_decision RECORDED
--   hold_s       hold seconds of answered calls (ACD = hold_s / answered)
--   pdd_ms_sum   post-dial delay of the calls that have one, and
--   pdd_n        how many they are (PDD = pdd_ms_sum / pdd_n)
--   billable_s   billable seconds of RECORDED calls
--   revenue      fee of RECORDED calls, in `currency`
--   cost         vendor cost of every call (the vendor bills answered calls
--                whatever our record decision), in `cost_currency`
--   at_risk      fee of SKIPPED and AUDIT calls, in `currency`
-- margin = revenue - cost per currency; ASR = answered / attempts.
-- NULL dimensions of a CDR are stored as '' (sorting keys cannot be Nullable
-- on every server version).

-- The newest version of every call, one row per call, with its dimensions
-- and its measures: the per-call level under the aggregates, read for short
-- time ranges, for the ragged ends of long ones, and for filter combinations
-- that have no aggregate. bucket = call start (seconds), hour = its hour.
CREATE TABLE IF NOT EXISTS {{db}}.cdr_newest
(
    call_id          String,
    version          UInt64,
    call_start_ms    Int64,
    bucket           DateTime('UTC'),
    hour             DateTime('UTC'),
    account_id       {{LowCardinality(String)}},
    ingress_gateway  {{LowCardinality(String)}},
    egress_gateway   {{LowCardinality(String)}},
    currency         {{LowCardinality(String)}},
    cost_currency    {{LowCardinality(String)}},
    rate_prefix      String,
    hangup_source    {{LowCardinality(String)}},
    server_reason    {{LowCardinality(String)}},
    record_decision  {{LowCardinality(String)}},
    decision_reason  {{LowCardinality(String)}},
    attempts         UInt64,
    answered         UInt64,
    recorded         UInt64,
    hold_s           Int64,
    pdd_ms_sum       Int64,
    pdd_n            UInt64,
    billable_s       Int64,
    revenue          Decimal(38, 6),
    cost             Decimal(38, 6),
    at_risk          Decimal(38, 6)
)
ENGINE = MergeTree
PARTITION BY toDate(bucket)
ORDER BY (hour, account_id, bucket)
SETTINGS index_granularity = 1024;

-- Aggregates: grouping sets of the newest versions per time bucket.
--  * grain 'minute', 'hour' or 'day'; bucket = its start (UTC).
--  * account_id '*' = all accounts; gateway '*' = all gateways, else one
--    gateway in the role gateway_role: 'in' (ingress), 'out' (egress) or
--    'both' (a call whose ingress and egress gateway are the same), so a
--    filter on a gateway counts each call once.
--  * breakdown 'traffic' (keys currency, cost_currency), 'outcome' (+
--    hangup_source, server_reason, record_decision, decision_reason) and
--    'destination' (+ rate_prefix).
--  * Which (account, gateway) sets each breakdown keeps, and at which
--    grains, is the refresher's PLAN (pipeline/dashboard/refresh.py): every
--    set has day rows, most have hour rows, traffic for all accounts and
--    gateways has minute rows; readers fill the rest from cdr_newest.
-- Columns that do not belong to a breakdown are ''.
CREATE TABLE IF NOT EXISTS {{db}}.cdr_agg
(
    breakdown        {{LowCardinality(String)}},
    grain            {{LowCardinality(String)}},
    bucket           DateTime('UTC'),
    account_id       {{LowCardinality(String)}},
    gateway          {{LowCardinality(String)}},
    gateway_role     {{LowCardinality(String)}},
    currency         {{LowCardinality(String)}},
    cost_currency    {{LowCardinality(String)}},
    rate_prefix      String,
    hangup_source    {{LowCardinality(String)}},
    server_reason    {{LowCardinality(String)}},
    record_decision  {{LowCardinality(String)}},
    decision_reason  {{LowCardinality(String)}},
    attempts         UInt64,
    answered         UInt64,
    recorded         UInt64,
    hold_s           Int64,
    pdd_ms_sum       Int64,
    pdd_n            UInt64,
    billable_s       Int64,
    revenue          Decimal(38, 6),
    cost             Decimal(38, 6),
    at_risk          Decimal(38, 6)
)
ENGINE = MergeTree
PARTITION BY toDate(bucket)
ORDER BY (breakdown, grain, account_id, gateway, bucket)
SETTINGS index_granularity = 1024;

-- One row per refresh that changed something. The next refresh picks up the
-- CDR versions inserted at or after the newest `watermark` (the start of
-- that refresh less an overlap, so that inserts in flight are not missed).
CREATE TABLE IF NOT EXISTS {{db}}.cdr_agg_refresh
(
    refresh_id    String,
    started_at    DateTime('UTC'),
    finished_at   DateTime('UTC'),
    watermark     DateTime('UTC'),
    full_rebuild  UInt8,
    days          Array(Date),
    rows_written  UInt64,
    duration_ms   UInt64
)
ENGINE = MergeTree
ORDER BY finished_at{{since 19.6:
TTL finished_at + INTERVAL 90 DAY}};
