"""cdr-pipeline: event-streaming CDR rating for VoIP carriers."""

__version__ = "0.1.0"
