"""The offline driver: `rate-file` rates a JSON Lines file with the billing core."""
