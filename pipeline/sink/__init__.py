"""The ClickHouse sink: Kafka `cdrs` -> ClickHouse `cdr`, offsets committed after insert.

`batcher` is pure; `service` holds the consumer loop (confluent-kafka); `cli` the
`cdr-pipeline sink` command; `url` opens a backend from a ClickHouse URL.
See docs/sink.md.
"""
