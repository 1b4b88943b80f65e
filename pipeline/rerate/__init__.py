"""Re-rating: replay calls under a new tariff or policy, with an audit trail (docs/rerating.md).

Layout:
- `facts`: a stored CDR row back to the call's events (a CallView), pure;
- `compare`: which billing-relevant fields of a call changed, pure;
- `delta`: the per-account/currency delta report of a run, pure;
- `store`: ClickHouse reads and writes of a run (stored rows, history, new versions, run records);
- `sources`: where the re-rated calls come from (stored CDR facts, or the call-events topic);
- `runner`: one re-rating run end to end; `cli`: the `rerate` command.
"""
