"""The demo: traffic in (simulated or through a real SIP switch), rated CDRs in
ClickHouse, a report out."""
