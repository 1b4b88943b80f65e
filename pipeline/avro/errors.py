"""What the schema compiler (compiled.py) and the codecs it generates raise.

A module of its own because every generated codec module imports it (wire.py): the
classes must be the same objects whether a codec was compiled by mypyc or exec'd.
"""

from __future__ import annotations


class UnsupportedSchema(ValueError):
    """The schema uses an Avro type (or shape) this compiler does not handle."""


class CorruptBody(ValueError):
    """The bytes are not a valid Avro body for the compiled schema."""
