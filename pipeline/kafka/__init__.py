"""Kafka adapters: topic management (and, next to it, producers and consumers)."""

from pipeline.kafka.admin import (
    KafkaAdminError,
    TopicSpec,
    default_topic_specs,
    delete_topics,
    ensure_topics,
    topic_configs,
)

__all__ = [
    "KafkaAdminError",
    "TopicSpec",
    "default_topic_specs",
    "delete_topics",
    "ensure_topics",
    "topic_configs",
]
