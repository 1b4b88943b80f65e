"""Switch adapters: turn a switch's own event feed into CallEvents on Kafka.

``cdr-pipeline ingest kamailio`` reads Kamailio's evapi stream (and its journal as a
backstop) and publishes with the same SwitchPublisher as the simulator, so the rest
of the pipeline cannot tell a real switch from a simulated one (docs/switches.md).
"""
