"""The project's exception hierarchy: one root, named failures at each boundary."""


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A configuration file, deck or setting is unusable; the message names the key or line."""


class InvalidEvent(PipelineError):
    """A call event that cannot be used; `reason` is what the dead-letter record carries."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field

    @property
    def category(self) -> str:
        """A short label to count rejects by: the field at fault, or how decoding failed."""
        return f"bad {self.field}" if self.field else "undecodable"
