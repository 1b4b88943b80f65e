"""The streaming correlator: a Faust app driving the billing core."""
