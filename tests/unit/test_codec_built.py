"""The mypyc build of the generated Avro codec against the same source run as Python.

codec.py runs one generated source (`codec.SOURCE`) either way: exec'd, or compiled by
mypyc when deploy/local/bootstrap.sh --dev built it from that very source. The build
must give the same bytes, records and errors; without a current build there is nothing
to compare and those tests are skipped, saying so. That a stale build is never used,
and that CDR_PURE_AVRO turns it off, is checked either way.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.avro import build, codec
from pipeline.avro import compiled as avro_compiled
from pipeline.core.cdr import RatedCdr
from pipeline.core.events import CallEvent
from tests.unit.test_codec_compiled import CDR, EVENT, assert_identical, fa_write, records

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
built = pytest.mark.skipif(
    not codec.GENERATED_BUILT,
    reason="no current mypyc build of the Avro codec (deploy/local/bootstrap.sh --dev builds it)",
)


@pytest.fixture(scope="module")
def python() -> Any:
    """codec.SOURCE exec'd as Python, whatever is built."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CDR_PURE_AVRO", "1")
        module = avro_compiled.load(codec.SOURCE)
    assert not avro_compiled.is_built(module)
    return module


def _outcome(function: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", function(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@built
@SETTINGS
@given(records(EVENT))
def test_events_are_the_same_built_or_not(python: Any, record: dict[str, Any]) -> None:
    message = codec.MAGIC + codec.CALL_EVENT.fingerprint + fa_write(EVENT, record)
    build_, plain = codec.GENERATED, python
    assert build_.encode_CallEvent(record) == plain.encode_CallEvent(record) == message
    event = CallEvent(**record)
    assert build_.encode_CallEvent_position(event) == plain.encode_CallEvent_position(event)
    got, end = build_.decode_CallEvent(message, 10)
    want, plain_end = plain.decode_CallEvent(message, 10)
    assert end == plain_end == len(message)
    assert_identical(got, want)


@built
@SETTINGS
@given(records(CDR))
def test_cdrs_are_the_same_built_or_not(python: Any, record: dict[str, Any]) -> None:
    message = codec.MAGIC + codec.RATED_CDR.fingerprint + fa_write(CDR, record)
    build_, plain = codec.GENERATED, python
    assert build_.encode_RatedCdr(record) == plain.encode_RatedCdr(record) == message
    cdr = RatedCdr(**{**record, "flags": tuple(record["flags"])})
    assert build_.encode_RatedCdr_position(cdr) == plain.encode_RatedCdr_position(cdr) == message
    got, _ = build_.decode_RatedCdr(message, 10)
    want, _ = plain.decode_RatedCdr(message, 10)
    assert_identical(got, want)


ODD = [1.5, True, 2**63, -(2**63) - 1, "x", b"x", None, ("long", 3)]


@built
@pytest.mark.parametrize("value", ODD, ids=repr)
@pytest.mark.parametrize("field", ["version", "sip_code", "fee", "status", "flags", "caller"])
def test_odd_values_are_deferred_alike(python: Any, field: str, value: Any) -> None:
    """What the build does not take (returns None: fastavro decides), Python does not."""
    record = {f["name"]: None for f in CDR["fields"]}
    record.update(call_id="c", version=1, status="COMPLETE", record_decision="RECORDED",
                  billing_mode="NORMAL", switch_id="sw1", answered=True, hold_ms=0, hold_s=0,
                  rated_s=0, hangup_source="CALLER", tariff_version="t", flags=[])
    record[field] = value
    assert (_outcome(codec.GENERATED.encode_RatedCdr, record)
            == _outcome(python.encode_RatedCdr, record))


@built
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupt_bodies_fail_alike(python: Any, data: st.DataObject) -> None:
    record = data.draw(records(EVENT))
    message = bytearray(codec.MAGIC + codec.CALL_EVENT.fingerprint + fa_write(EVENT, record))
    for _ in range(data.draw(st.integers(1, 4))):
        message[data.draw(st.integers(10, len(message) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(message[:data.draw(st.integers(10, len(message)))])
    assert (_outcome(codec.GENERATED.decode_CallEvent, cut, 10)
            == _outcome(python.decode_CallEvent, cut, 10))


def test_a_build_of_another_source_is_not_used() -> None:
    edited = codec.SOURCE + "\n# an edit after the build\n"
    assert avro_compiled.source_stamp(edited) != avro_compiled.source_stamp(codec.SOURCE)
    assert not avro_compiled.is_built(avro_compiled.load(edited))


def test_pure_avro_runs_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    assert avro_compiled.is_built(avro_compiled.load(codec.SOURCE)) == codec.GENERATED_BUILT
    monkeypatch.setenv("CDR_PURE_AVRO", "1")
    assert not avro_compiled.is_built(avro_compiled.load(codec.SOURCE))


def test_the_build_writes_the_codec_source(tmp_path: Any,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main([str(tmp_path)]) == 0
    stamp, folder, module = capsys.readouterr().out.split()
    assert (tmp_path / f"{module}.py").read_text() == codec.SOURCE
    assert stamp == avro_compiled.source_stamp(codec.SOURCE)
    assert folder == str(avro_compiled.BUILD_DIR)
