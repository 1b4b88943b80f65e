"""A Kamailio switch node with two SIPp carrier gateways, on free loopback ports.

One place that starts the whole switch side (deploy/local/kamailio.sh with its
lists written for the chosen ports, and two SIPp UAS gateways) for the tests, the
SIP demo and the SIP benchmark, so they all run the same switch. The lists match
deploy/kamailio/pipeline.toml: gateways gw-a (route prefix 999) and gw-b (888),
callers acct-100 on in-gw-1 (by source port) and acct-200 on in-gw-2 (trusted for
X-Account).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.sip.traffic import CallSpec, Gateway, RunResult, run_calls, start_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "deploy" / "local" / "kamailio.sh"
JOURNAL_MARK = "CDR-EVENT "


def free_ports(count: int) -> list[int]:
    """Distinct free TCP/UDP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class NodeSettings:
    """Timers and identity of the node (kamailio.sh's CDR_KAM_* settings)."""

    node: str = "kam-1"
    max_call_s: int = 7200
    no_answer_s: int = 60
    fr_timer_ms: int = 1000
    children: int = 2
    shm_mb: int = 256  # kamailio.sh's default; 64 MB ran out above ~300 calls/s
    gateway_hangup_ms: int = 800  # how long a "callee hangs up" gateway call lasts
    blocklist: tuple[str, ...] = ("1900*", "4930666666")


@dataclass
class SwitchNode:
    """A running switch node; use :func:`start_node` and close it (or use ``with``)."""

    base: Path
    env: dict[str, str]
    sip_port: int
    evapi_port: int
    caller_port: int  # the trusted caller's source port (acct-100, in-gw-1)
    xacct_port: int  # the source trusted to send X-Account (in-gw-2)
    unknown_port: int  # a source the switch does not know (403, UNAUTHORIZED_SOURCE)
    gateway_ports: tuple[int, int]
    gateways: list[Gateway] = field(default_factory=list)

    @property
    def evapi(self) -> str:
        return f"127.0.0.1:{self.evapi_port}"

    @property
    def journal(self) -> Path:
        """Kamailio's log, whose CDR-EVENT lines are the adapter's backstop."""
        return self.base / "stack" / "kamailio.log"

    @property
    def workdir(self) -> Path:
        return self.base / "sipp"

    def sh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run deploy/local/kamailio.sh for this node."""
        return subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True,
                              text=True, check=check, timeout=180)

    def calls(self, scenario: str, specs: list[CallSpec], **kw: Any) -> RunResult:
        """Place calls with a SIPp UAC scenario from the trusted caller's port."""
        kw.setdefault("local_port", self.caller_port)
        kw.setdefault("timeout_s", 60)
        return run_calls(scenario, specs, self.workdir, switch_port=self.sip_port, **kw)

    def kill(self, call_id: str) -> None:
        """End an answered call as an administrator would (server_reason ADMIN)."""
        self.sh("kill", call_id)

    def journal_events(self) -> Iterator[dict[str, Any]]:
        text = self.journal.read_text(errors="replace") if self.journal.exists() else ""
        for line in text.splitlines():
            at = line.find(JOURNAL_MARK)
            if at >= 0:
                yield json.loads(line[at + len(JOURNAL_MARK):])

    def close(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
        self.gateways.clear()
        self.sh("down", check=False)

    def __enter__(self) -> SwitchNode:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_node(base: Path, settings: NodeSettings | None = None) -> SwitchNode:
    """Write the node's lists for free ports under ``base``, start Kamailio and gateways.

    Raises RuntimeError with kamailio.sh's own message when the switch does not start.
    """
    settings = settings or NodeSettings()
    base.mkdir(parents=True, exist_ok=True)
    sip, evapi, gwa, gwb, caller, xacct, unknown = free_ports(7)
    (base / "dispatcher.list").write_text(
        f"1 sip:127.0.0.1:{gwa} 0 20 gw=gw-a;prefix=999\n"
        f"1 sip:127.0.0.1:{gwb} 0 10 gw=gw-b;prefix=888\n")
    (base / "addresses.list").write_text(
        f"1 127.0.0.1 32 {caller} acct-100,in-gw-1\n2 127.0.0.1 32 {xacct} acct-200,in-gw-2\n")
    (base / "blocklist.txt").write_text("\n".join(settings.blocklist) + "\n")
    env = dict(os.environ)
    env.update(
        CDR_KAM_BASE=str(base / "stack"),
        CDR_KAM_SIP_PORT=str(sip),
        CDR_KAM_EVAPI_PORT=str(evapi),
        CDR_KAM_MAX_CALL_S=str(settings.max_call_s),
        CDR_KAM_NO_ANSWER_S=str(settings.no_answer_s),
        CDR_KAM_FR_TIMER_MS=str(settings.fr_timer_ms),
        CDR_KAM_NODE=settings.node,
        CDR_KAM_CHILDREN=str(settings.children),
        CDR_KAM_SHM_MB=str(settings.shm_mb),
        CDR_KAM_DISPATCHER_FILE=str(base / "dispatcher.list"),
        CDR_KAM_ADDRESS_FILE=str(base / "addresses.list"),
        CDR_KAM_BLOCKLIST_FILE=str(base / "blocklist.txt"),
    )
    node = SwitchNode(base, env, sip, evapi, caller, xacct, unknown, (gwa, gwb))
    up = node.sh("up", check=False)
    if up.returncode != 0:
        raise RuntimeError(f"the Kamailio switch node did not start: {up.stderr.strip()}")
    try:
        node.gateways = [
            start_gateway("gw-a", gwa, node.workdir, hangup_ms=settings.gateway_hangup_ms),
            start_gateway("gw-b", gwb, node.workdir, hangup_ms=settings.gateway_hangup_ms),
        ]
    except BaseException:
        node.close()
        raise
    return node
