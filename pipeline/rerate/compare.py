"""Did re-rating change a call? Every field of the CDR counts except the version, the
tariff version and the re-rating bookkeeping (docs/rerating.md, "What counts as a change").

Money compares by value (0.1200 equals 0.12: a new `fee_precision` that rounds every
amount the same way changes nothing billable), flags as a set of remarks in order.
"""

from __future__ import annotations

from pipeline.core.cdr import CDR_FIELDS, RatedCdr
from pipeline.rerate.facts import I_FLAGS, StoredRow

IGNORED = frozenset({"call_id", "version", "tariff_version"})
COMPARED: tuple[int, ...] = tuple(i for i, name in enumerate(CDR_FIELDS) if name not in IGNORED)
# The compared fields form two runs of positions around tariff_version; slicing is
# much faster than indexing field by field.
_FIRST = CDR_FIELDS.index("status")
_TARIFF = CDR_FIELDS.index("tariff_version")
assert COMPARED == (*range(_FIRST, _TARIFF), I_FLAGS), "RatedCdr field order changed"


def same_billing(stored: StoredRow, new: RatedCdr) -> bool:
    """True when `new` bills the call exactly as the stored row did."""
    return bool(
        tuple(stored[_FIRST:_TARIFF]) == new[_FIRST:_TARIFF]
        and tuple(stored[I_FLAGS] or ()) == tuple(new.flags)
    )


_NAMES = CDR_FIELDS[_FIRST:_TARIFF]


def changed_fields(stored: StoredRow, new: RatedCdr) -> tuple[str, ...]:
    """The names of the fields that differ (empty when `same_billing`)."""
    out = [
        name
        for name, a, b in zip(_NAMES, stored[_FIRST:_TARIFF], new[_FIRST:_TARIFF], strict=True)
        if a != b
    ]
    if tuple(stored[I_FLAGS] or ()) != tuple(new.flags):
        out.append("flags")
    return tuple(out)
