"""The ClickHouse sink: Kafka `cdrs` -> ClickHouse `cdr`, offsets committed after insert.

`service` composes the parts: `loop` (read, batch, store, commit, in order), `reader`,
`batcher` (pure), `inserter` and `store` (the insert thread, its backoff, the
ClickHouse insert), `dlq` (dead letters), `committer`, `rebalance`, `progress` (lag,
caught-up, idle) and `lifecycle` (the state machine). `clients` is where the Kafka
clients come from; `config` the settings; `cli` the `cdr-pipeline sink` command.
See docs/sink.md.
"""
