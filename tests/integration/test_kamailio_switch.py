"""The Kamailio switch node against real SIP traffic (SIPp), checked through evapi.

Starts deploy/local/kamailio.sh on free ports with its own lists (two SIPp
gateways, a trusted caller port, a caller trusted for X-Account, a block list),
connects a plain TCP client to evapi and asserts on the netstring JSON frames:
the contract the pipeline's switch adapter parses. Also checks that every event
reached the journal ("CDR-EVENT <json>" lines in kamailio.log) and that SIPp's
own per-call records agree with the events.

Timers are shortened so the whole module stays well under 90 s: max call
duration 3 s, no-answer timer 2 s, silent-gateway timer 1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.sip.node import NodeSettings, SwitchNode, start_node
from pipeline.sip.traffic import CallSpec, RunResult, start_calls

pytestmark = pytest.mark.integration

MAX_CALL_S = 3
NO_ANSWER_S = 2
NODE = "kam-test"
CALLER = "4930111222"


class EvapiClient:
    """Plain TCP evapi client: splits the netstring stream into JSON events."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.settimeout(0.2)
        self.events: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                self.errors.append(repr(e))
                return
            if not chunk:
                return
            buf += chunk
            while True:
                head, sep, rest = buf.partition(b":")
                if not sep:
                    break
                if not head.isdigit():
                    self.errors.append(f"bad netstring length {head[:20]!r}")
                    return
                n = int(head)
                if len(rest) < n + 1:
                    break
                payload, trailer, buf = rest[:n], rest[n : n + 1], rest[n + 1 :]
                if trailer != b",":
                    self.errors.append(f"netstring not closed by ',': {trailer!r}")
                    return
                with self._cond:
                    self.raw.append(payload)
                    self.events.append(json.loads(payload))
                    self._cond.notify_all()

    def for_call(self, call_id: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["call_id"] == call_id]

    def wait(self, pred: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
                self._cond.wait(left)

    def wait_kinds(self, call_id: str, kinds: list[str], timeout_s: float = 10) -> dict[str, Any]:
        """Wait for the call's HANGUP, then check its whole event sequence."""

        def done() -> bool:
            return any(e["call_id"] == call_id and e["kind"] == "HANGUP" for e in self.events)

        self.wait(done, timeout_s, f"HANGUP of {call_id}")
        evs = self.for_call(call_id)
        assert [e["kind"] for e in evs] == kinds, evs
        return {e["kind"]: e for e in evs}

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=2)


Switch = SwitchNode


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchNode]:
    if shutil.which("kamailio") is None and os.geteuid() != 0:
        pytest.skip("kamailio not installed and not root to apt-get it")
    settings = NodeSettings(node=NODE, max_call_s=MAX_CALL_S, no_answer_s=NO_ANSWER_S)
    with start_node(tmp_path_factory.mktemp("kamailio"), settings) as node:
        yield node


@pytest.fixture()
def evapi(switch: Switch) -> Iterator[EvapiClient]:
    client = EvapiClient(switch.evapi_port)
    # evapi only sends to clients it has accepted; the switch logs that
    mark = f"evapi client connected from 127.0.0.1:{client.sock.getsockname()[1]}"
    deadline = time.monotonic() + 5
    while mark not in switch.journal.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"evapi did not log {mark!r}"
        time.sleep(0.02)  # polling a file for a condition, with a deadline
    yield client
    assert not client.errors, client.errors
    client.close()


def _one(res: RunResult) -> Any:
    assert len(res.calls) == 1, res
    return next(iter(res.calls.values()))


def test_status_reports_up(switch: Switch) -> None:
    assert switch.sh("status", check=False).returncode == 0


def test_answered_call_ended_by_caller(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("caller_bye", [CallSpec(CALLER, "4420711")], hold_ms=600)
    assert (res.successful, res.failed) == (1, 0)
    call = _one(res)
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "ANSWER", "HANGUP"])
    assert ev["SETUP"] == {
        **ev["SETUP"],
        "caller": CALLER,
        "callee": "4420711",
        "src": f"127.0.0.1:{switch.caller_port}",
        "account": "acct-100",
        "ingress_gw": "in-gw-1",
        "illegal": "",
        "node": NODE,
    }
    assert ev["RINGING"]["code"] == 180 and ev["RINGING"]["egress_gw"] == "gw-a"
    assert ev["ANSWER"]["egress_gw"] == "gw-a"
    assert ev["ANSWER"]["callee_gw"] == "9994420711"
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"], h["sip_code"]) == (True, "CALLER", "", 200)
    assert h["reason"].startswith("Q.850;cause=16")
    assert h["egress_gw"] == "gw-a"
    # SIPp's and Kamailio's clocks are the same here: durations agree closely
    kam_duration = float(h["ts"]) - float(ev["ANSWER"]["ts"])
    assert call.answered and call.hangup == "CALLER"
    assert call.duration_s is not None and abs(kam_duration - call.duration_s) < 0.1
    for e in ev.values():
        assert isinstance(e["ts"], str) and "." in e["ts"]


def test_answered_call_ended_by_callee(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("wait_bye", [CallSpec(CALLER, "4420711900")])
    assert (res.successful, res.failed) == (1, 0)
    call = _one(res)
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "ANSWER", "HANGUP"])
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"], h["sip_code"]) == (True, "CALLEE", "", 200)
    assert h["reason"].startswith("Q.850;cause=16")
    assert call.hangup == "REMOTE" and call.duration_s is not None
    assert 0.6 < call.duration_s < 2.0


def test_busy(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("caller_bye", [CallSpec(CALLER, "4420711486")])
    call = _one(res)
    assert call.final_code == 486 and not call.answered
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "HANGUP"])
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"], h["sip_code"]) == (
        False, "CALLEE", "", 486,
    )  # fmt: skip
    assert h["reason"] == 'Q.850;cause=17;text="User busy"'
    assert h["egress_gw"] == "gw-a"


def test_caller_cancels_after_ringing(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("cancel", [CallSpec(CALLER, "4420711000")], hold_ms=300)
    assert (res.successful, res.failed) == (1, 0)
    call = _one(res)
    assert call.final_code == 487 and call.hangup == "CALLER"
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "HANGUP"])
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"], h["sip_code"]) == (
        False, "CALLER", "", 487,
    )  # fmt: skip
    assert h["reason"].startswith("SIP;cause=487")
    assert h["egress_gw"] == "gw-a"


def test_no_answer_timeout(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("caller_bye", [CallSpec(CALLER, "4420722000")])
    call = _one(res)
    assert call.final_code == 408
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "HANGUP"])
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"], h["sip_code"]) == (
        False, "SERVER", "", 408,
    )  # fmt: skip
    rang_for = float(h["ts"]) - float(ev["RINGING"]["ts"])
    assert NO_ANSWER_S - 0.1 < rang_for < NO_ANSWER_S + 1.0


def test_route_advance_after_503(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("caller_bye", [CallSpec(CALLER, "4420711503")], hold_ms=300)
    assert (res.successful, res.failed) == (1, 0)
    call = _one(res)
    assert call.answered
    # gw-a rang before its 503, gw-b rang again: only the first 18x counts
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "ANSWER", "HANGUP"])
    assert ev["RINGING"]["egress_gw"] == "gw-a"
    assert ev["ANSWER"]["egress_gw"] == "gw-b"
    assert ev["ANSWER"]["callee_gw"] == "8884420711503"
    assert ev["HANGUP"]["by"] == "CALLER" and ev["HANGUP"]["egress_gw"] == "gw-b"


def test_all_gateways_fail(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("caller_bye", [CallSpec(CALLER, "4420711599")])
    call = _one(res)
    assert call.final_code == 503
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "HANGUP"])
    h = ev["HANGUP"]
    assert (h["by"], h["sip_code"], h["egress_gw"]) == ("CALLEE", 503, "gw-b")


def test_max_duration_cut_by_server(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("wait_bye", [CallSpec(CALLER, "4420733")], timeout_s=MAX_CALL_S + 10)
    assert (res.successful, res.failed) == (1, 0)
    call = _one(res)
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "ANSWER", "HANGUP"])
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"], h["sip_code"]) == (
        True, "SERVER", "MAX_DURATION", 200,
    )  # fmt: skip
    assert call.hangup == "REMOTE" and call.duration_s is not None
    # the dialog timer ticks once a second and counts whole seconds: the BYE
    # comes within about a second of the limit, early or late
    late = float(h["ts"]) - float(ev["ANSWER"]["ts"]) - MAX_CALL_S
    print(f"max-duration BYE {late:+.3f}s from the limit; SIPp talk time {call.duration_s:.3f}s")
    assert -1.0 < late < 2.0, late
    assert MAX_CALL_S - 1.0 < call.duration_s < MAX_CALL_S + 2.0


def test_admin_kill(switch: Switch, evapi: EvapiClient) -> None:
    run = start_calls(
        "wait_bye",
        [CallSpec(CALLER, "4420744")],
        switch.workdir,
        switch_port=switch.sip_port,
        local_port=switch.caller_port,
        timeout_s=20,
    )
    evapi.wait(
        lambda: any(e["kind"] == "ANSWER" for e in evapi.events if e["call_id"] in run.facts()),
        10,
        "ANSWER of the call to kill",
    )
    (call_id,) = run.facts()
    killed = switch.sh("kill", call_id, check=False)
    assert killed.returncode == 0, killed.stderr
    res = run.wait(20)
    assert (res.successful, res.failed) == (1, 0)
    ev = evapi.wait_kinds(call_id, ["SETUP", "RINGING", "ANSWER", "HANGUP"])
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"]) == (True, "SERVER", "ADMIN")
    assert res.calls[call_id].hangup == "REMOTE"
    # an unknown Call-ID is an error, not a silent success
    assert switch.sh("kill", "no-such-call", check=False).returncode != 0


def test_unknown_source_rejected(switch: Switch, evapi: EvapiClient) -> None:
    res = switch.calls("caller_bye", [CallSpec(CALLER, "4420711")], local_port=switch.unknown_port)
    call = _one(res)
    assert call.final_code == 403
    ev = evapi.wait_kinds(call.call_id, ["SETUP", "HANGUP"])
    s = ev["SETUP"]
    assert (s["illegal"], s["account"], s["ingress_gw"]) == ("UNAUTHORIZED_SOURCE", "", "")
    assert s["src"] == f"127.0.0.1:{switch.unknown_port}"
    h = ev["HANGUP"]
    assert (h["answered"], h["by"], h["server_reason"], h["sip_code"], h["egress_gw"]) == (
        False, "SERVER", "POLICY", 403, "",
    )  # fmt: skip


def test_blocked_callee_rejected(switch: Switch, evapi: EvapiClient) -> None:
    specs = [CallSpec(CALLER, "19005551234"), CallSpec(CALLER, "4930666666")]
    res = switch.calls("caller_bye", specs)
    assert {c.final_code for c in res.calls.values()} == {403}
    for call in res.calls.values():
        ev = evapi.wait_kinds(call.call_id, ["SETUP", "HANGUP"])
        assert ev["SETUP"]["illegal"] == "BLACKLISTED"
        assert ev["SETUP"]["account"] == "acct-100"
        assert (ev["HANGUP"]["by"], ev["HANGUP"]["server_reason"]) == ("SERVER", "POLICY")
    # exact entries block only that number
    ok = switch.calls("caller_bye", [CallSpec(CALLER, "49306666661")], hold_ms=100)
    assert _one(ok).answered


def test_trusted_source_names_account(switch: Switch, evapi: EvapiClient) -> None:
    specs = [
        CallSpec(CALLER, "4420755", "X-Account: acct-777"),
        CallSpec(CALLER, "4420756"),
    ]
    res = switch.calls("caller_bye", specs, local_port=switch.xacct_port, hold_ms=100)
    assert res.successful == 2
    accounts = []
    for call in res.in_order():
        ev = evapi.wait_kinds(call.call_id, ["SETUP", "RINGING", "ANSWER", "HANGUP"])
        accounts.append((ev["SETUP"]["account"], ev["SETUP"]["ingress_gw"]))
    assert accounts == [("acct-777", "in-gw-2"), ("acct-200", "in-gw-2")]


def test_journal_has_every_event_first(switch: Switch, evapi: EvapiClient) -> None:
    """Every evapi event is also in the journal, byte-for-byte the same JSON."""
    res = switch.calls("caller_bye", [CallSpec(CALLER, "4420711486")])
    call = _one(res)
    evapi.wait_kinds(call.call_id, ["SETUP", "HANGUP"])
    journal = list(switch.journal_events())
    for e in evapi.events:
        assert e in journal
    kinds = [e["kind"] for e in journal if e["call_id"] == call.call_id]
    assert kinds == ["SETUP", "HANGUP"]


def test_retransmitted_invite_makes_one_setup(switch: Switch, evapi: EvapiClient) -> None:
    """Raw UDP: the same INVITE three times, then the ACK; one SETUP, one HANGUP."""
    tag = uuid.uuid4().hex[:12]
    call_id = f"retr-{tag}@127.0.0.1"
    port, sip = switch.caller_port, switch.sip_port
    via = f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{tag}"
    common = (
        f"From: <sip:{CALLER}@127.0.0.1:{port}>;tag=f{tag}\r\n"
        f"Call-ID: {call_id}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    invite = (
        f"INVITE sip:4420799486@127.0.0.1:{sip} SIP/2.0\r\n{via}\r\n"
        f"To: <sip:4420799486@127.0.0.1:{sip}>\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:{CALLER}@127.0.0.1:{port}>\r\n" + common
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.settimeout(5)
        for _ in range(3):
            s.sendto(invite, ("127.0.0.1", sip))
        to_hdr = ""
        deadline = time.monotonic() + 5
        while not to_hdr:
            assert time.monotonic() < deadline, "no 486"
            msg = s.recv(65535).decode()
            if msg.startswith("SIP/2.0 486"):
                to_hdr = next(h for h in msg.split("\r\n") if h.lower().startswith("to:"))
        ack = (
            f"ACK sip:4420799486@127.0.0.1:{sip} SIP/2.0\r\n{via}\r\n{to_hdr}\r\n"
            "CSeq: 1 ACK\r\n" + common
        ).encode()
        s.sendto(ack, ("127.0.0.1", sip))
    evapi.wait_kinds(call_id, ["SETUP", "HANGUP"])
    kinds = [e["kind"] for e in switch.journal_events() if e["call_id"] == call_id]
    assert kinds == ["SETUP", "HANGUP"]
