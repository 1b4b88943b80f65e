"""The pure billing core: event model, correlation, recording policy, rating, config.

Nothing in this package does I/O beyond reading configuration files, and nothing
imports Kafka, Faust or ClickHouse code (tests/unit/test_core_purity.py checks).
The offline `rate-file` command and the streaming worker both drive it.
"""
