"""The switch side: the publisher library a switch integration uses, and a traffic simulator.

Import the submodules directly: ``pipeline.switch.publisher`` needs confluent-kafka,
``pipeline.switch.simulator`` needs only the billing core.
"""
