"""The correlator's deadline index (pipeline/core/deadlines.py): far deadlines wait in
buckets, and every call's deadline still comes out once event time reaches it, in
deadline order, with `horizon` never later than a pending entry."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.deadlines import BUCKET_MS, NEVER, Deadlines

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(steps=st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from("abcdef"), st.integers(0, 20 * BUCKET_MS)),
        st.tuples(st.just("advance"), st.just(""), st.integers(0, 25 * BUCKET_MS)),
    ),
    max_size=40,
))
def test_each_current_deadline_comes_out_when_event_time_reaches_it(
    steps: list[tuple[str, str, int]],
) -> None:
    index = Deadlines()
    current: dict[str, int] = {}  # each call's deadline; pushed whenever it is set
    watermark = 0
    for action, call_id, value in steps:
        if action == "push":
            current[call_id] = value
            index.push(value, call_id)
        else:
            watermark = max(watermark, value)
            index.open(watermark, current.get)
            popped = []
            while (entry := index.pop(watermark)) is not None:
                popped.append(entry)
            assert popped == sorted(popped)
            assert all(at <= watermark for at, _ in popped)
            for at, call_id in popped:
                if current.get(call_id) == at:
                    del current[call_id]  # handled, as the correlator would
        # Nothing due is left behind, and the horizon is at or before what is pending.
        due_left = {c for c, at in current.items() if at <= watermark}
        if action == "advance":
            assert not due_left
        pending = [at for at in current.values()]
        if pending:
            assert index.horizon <= min(pending)


def test_horizon_of_an_empty_index_is_never() -> None:
    index = Deadlines()
    assert index.horizon == NEVER
    index.push(5 * BUCKET_MS + 3, "a")
    assert index.horizon == 5 * BUCKET_MS
    index.open(5 * BUCKET_MS + 2, lambda call_id: 5 * BUCKET_MS + 3)
    assert index.pop(5 * BUCKET_MS + 2) is None
    assert index.pop(5 * BUCKET_MS + 3) == (5 * BUCKET_MS + 3, "a")
    assert index.horizon == NEVER
