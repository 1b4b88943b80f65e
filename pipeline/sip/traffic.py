"""Drive SIPp against the Kamailio switch node and read back what SIPp counted.

Two roles, both real SIP over UDP on 127.0.0.1:

* carrier gateways: long-running SIPp UAS processes (deploy/sipp/uas_gateway.xml)
  whose behaviour per call is chosen by the dialled number's last three digits
  (see :data:`BEHAVIOUR_SUFFIX`), so one gateway process serves every test case;
* callers: SIPp UAC runs (deploy/sipp/uac_*.xml) placing a list of calls read
  from an injection CSV, one run per scenario.

SIPp's own records are the ground truth returned here: the ``-trace_stat`` CSV
for successful/failed counts, and the scenario's ``<log>`` lines
("CDRCALL <call_id> <EVENT> <sec> <usec> [detail]") for per-call facts. A test
can then check the pipeline's CDRs against them call by call.
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIO_DIR = REPO_ROOT / "deploy" / "sipp"
HOST = "127.0.0.1"

#: The UAS gateway's behaviour by the last three digits of the dialled number.
BEHAVIOUR_SUFFIX: dict[str, str] = {
    "486": "busy: 486 Busy Here (with a Q.850 Reason)",
    "404": "404 Not Found",
    "503": "503 from the gateway with route prefix 999 (gw-a), the next one answers",
    "599": "503 from every gateway",
    "000": "rings until CANCELled (caller CANCEL or the switch's no-answer timer)",
    "900": "answers, then the callee hangs up after the gateway's hangup_ms",
}

#: UAC scenario files by short name.
SCENARIOS: dict[str, str] = {
    "caller_bye": "uac_caller_bye.xml",
    "wait_bye": "uac_wait_bye.xml",
    "cancel": "uac_cancel.xml",
}

_NO_EXTRA_HEADER = "X-Cdr-Test: 1"


def sipp_binary() -> str:
    """Path of ``sipp`` (Debian package sip-tester); fail early with a clear message."""
    path = shutil.which("sipp")
    if path is None:
        raise FileNotFoundError("sipp not found: run deploy/local/kamailio.sh install")
    return path


@dataclass(frozen=True)
class CallSpec:
    """One call to place: who calls, the dialled number, one optional extra header line."""

    caller: str
    callee: str
    extra_header: str | None = None  # e.g. "X-Account: acct-9"


@dataclass
class CallFacts:
    """What SIPp saw of one call (timestamps are Unix seconds, SIPp's clock)."""

    call_id: str
    invite_ts: float | None = None
    ringing_ts: float | None = None
    answer_ts: float | None = None
    end_ts: float | None = None  # BYE sent/received, CANCEL sent, or final failure
    answered: bool = False
    final_code: int | None = None  # 200 when answered, else the final error code
    hangup: str | None = None  # "CALLER" (SIPp sent BYE/CANCEL), "REMOTE" (got BYE), None

    @property
    def duration_s(self) -> float | None:
        """Talk time as SIPp measured it: 200 OK to BYE, None when not answered."""
        if self.answer_ts is None or self.end_ts is None:
            return None
        return self.end_ts - self.answer_ts


@dataclass
class RunResult:
    """One UAC run: SIPp's exit code, its counters and the per-call facts."""

    scenario: str
    returncode: int
    created: int
    successful: int
    failed: int
    calls: dict[str, CallFacts] = field(default_factory=dict)
    workdir: Path | None = None

    def in_order(self) -> list[CallFacts]:
        """Calls in the order they were placed (SIPp numbers Call-IDs "N-pid@ip")."""
        return sorted(self.calls.values(), key=lambda c: (c.invite_ts or 0.0, c.call_id))


@dataclass
class LoadResult:
    """A steady-rate run: calls placed and how SIPp counted them."""

    rate_cps: float
    placed: int
    successful: int
    failed: int
    elapsed_s: float
    returncode: int


# --- gateways (UAS) -----------------------------------------------------------------


@dataclass
class Gateway:
    """A SIPp UAS playing one carrier gateway; stop() it (or use it as a context manager)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL: only this process, which we started."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_gateway(
    name: str, port: int, workdir: Path, *, hangup_ms: int = 1000, host: str = HOST
) -> Gateway:
    """Start a UAS gateway on host:port in the background.

    ``hangup_ms`` is how long a "...900" call talks before the callee hangs up.
    SIPp binds its UDP port synchronously before it reads the scenario's first
    message, but the caller cannot see that; the switch's fr_timer (and the
    UAC's INVITE retransmissions) absorb a gateway that is a few ms late.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sipp_binary(),
        "-sf", str(SCENARIO_DIR / "uas_gateway.xml"),
        "-i", host, "-p", str(port),
        "-nostdin",
        "-d", str(hangup_ms),
        "-trace_err", "-error_file", str(workdir / f"{name}_errors.log"),
        "-max_recv_loops", "10000",
        "-max_sched_loops", "10000",
    ]  # fmt: skip
    stderr = open(workdir / f"{name}.stderr", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=workdir
    )
    stderr.close()
    gw = Gateway(name=name, port=port, process=proc, workdir=workdir)
    _wait_udp_bound(port, proc, deadline_s=5.0)
    return gw


def _wait_udp_bound(port: int, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    """Wait until something listens on UDP 127.0.0.1:port (from /proc/net/udp)."""
    want = f"{port:04X}"
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"sipp gateway on port {port} exited with {proc.returncode}")
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                local = line.split()[1]
                if local.endswith(":" + want):
                    return
        time.sleep(0.02)
    raise TimeoutError(f"sipp gateway did not bind UDP port {port}")


# --- callers (UAC) ------------------------------------------------------------------


@dataclass
class UacRun:
    """A UAC run in progress: wait() returns its :class:`RunResult`."""

    scenario: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_file: Path
    stat_file: Path

    def facts(self) -> dict[str, CallFacts]:
        """Per-call facts logged so far (usable while the run is going on)."""
        return parse_call_log(self.log_file)

    def wait(self, timeout_s: float = 60.0) -> RunResult:
        try:
            rc = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise
        created, ok, failed = parse_stat_totals(self.stat_file)
        return RunResult(
            scenario=self.scenario,
            returncode=rc,
            created=created,
            successful=ok,
            failed=failed,
            calls=parse_call_log(self.log_file),
            workdir=self.workdir,
        )


def write_injection_csv(path: Path, calls: Sequence[CallSpec]) -> None:
    """SIPp -inf file: SEQUENTIAL, "caller;callee;extra header line" per call."""
    lines = ["SEQUENTIAL"]
    for c in calls:
        extra = c.extra_header or _NO_EXTRA_HEADER
        for v in (c.caller, c.callee, extra):
            if ";" in v or "\n" in v:
                raise ValueError(f"';' or newline not allowed in SIPp injection fields: {v!r}")
        lines.append(f"{c.caller};{c.callee};{extra}")
    path.write_text("\n".join(lines) + "\n")


def start_calls(
    scenario: str,
    calls: Sequence[CallSpec],
    workdir: Path,
    *,
    switch_port: int,
    local_port: int,
    hold_ms: int = 1000,
    rate_cps: float = 10.0,
    max_concurrent: int | None = None,
    local_ip: str = HOST,
    switch_host: str = HOST,
    timeout_s: int = 120,
    trace_calls: bool = True,
    call_id_format: str | None = None,
) -> UacRun:
    """Start placing ``calls`` with one UAC scenario (see :data:`SCENARIOS`).

    ``hold_ms`` is SIPp's -d: talk time before the caller's BYE (caller_bye) or
    ring time before the CANCEL (cancel). ``local_ip``/``local_port`` is the
    caller's source address, which the switch classifies (trusted list).
    ``call_id_format`` is SIPp's -cid_str (e.g. ``"run7-%u-%p@%s"``), for Call-IDs
    unique across runs; SIPp's default is ``"%u-%p@%s"``.
    """
    if not calls:
        raise ValueError("no calls to place")
    file = SCENARIOS.get(scenario, scenario)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{Path(file).stem}_{local_port}_{time.monotonic_ns()}"
    inf = workdir / f"{tag}.csv"
    write_injection_csv(inf, calls)
    log_file = workdir / f"{tag}_calls.log"
    stat_file = workdir / f"{tag}_stat.csv"
    cmd = [
        sipp_binary(), f"{switch_host}:{switch_port}",
        "-sf", str(SCENARIO_DIR / file),
        "-i", local_ip, "-p", str(local_port),
        "-inf", str(inf),
        "-m", str(len(calls)),
        "-r", str(rate_cps), "-rp", "1000",
        "-d", str(hold_ms),
        "-nostdin",
        "-timeout", f"{timeout_s}s",
        "-trace_stat", "-stf", str(stat_file), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / f"{tag}_errors.log"),
        "-max_recv_loops", "10000",
        "-max_sched_loops", "10000",
    ]  # fmt: skip
    if max_concurrent:
        cmd += ["-l", str(max_concurrent)]
    if call_id_format:
        cmd += ["-cid_str", call_id_format]
    if trace_calls:
        cmd += ["-trace_logs", "-log_file", str(log_file)]
    out = open(workdir / f"{tag}.out", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=workdir)
    out.close()
    return UacRun(
        scenario=scenario, process=proc, workdir=workdir, log_file=log_file, stat_file=stat_file
    )


def run_calls(
    scenario: str, calls: Sequence[CallSpec], workdir: Path, **kwargs: object
) -> RunResult:
    """Place ``calls`` and wait for SIPp to finish; see :func:`start_calls`."""
    timeout = float(kwargs.get("timeout_s", 120))  # type: ignore[arg-type]
    return start_calls(scenario, calls, workdir, **kwargs).wait(timeout + 10)  # type: ignore[arg-type]


def run_load(
    workdir: Path,
    *,
    switch_port: int,
    local_port: int,
    rate_cps: float,
    total_calls: int,
    hold_ms: int = 500,
    max_concurrent: int = 5000,
    caller: str = "4930100000",
    callee_prefix: str = "44207",
    timeout_s: int = 300,
) -> LoadResult:
    """Steady-rate benchmark: answered calls with a short hold, ended by the caller.

    Per-call logging is off (it would dominate at a few hundred calls/s); the
    counts come from SIPp's statistics file only.
    """
    calls = [
        CallSpec(caller, f"{callee_prefix}{i % 1000:03d}{(i * 7) % 10}1")
        for i in range(total_calls)
    ]  # never ends in a behaviour suffix: every call is answered
    t0 = time.monotonic()
    res = start_calls(
        "caller_bye",
        calls,
        workdir,
        switch_port=switch_port,
        local_port=local_port,
        hold_ms=hold_ms,
        rate_cps=rate_cps,
        max_concurrent=max_concurrent,
        timeout_s=timeout_s,
        trace_calls=False,
    ).wait(timeout_s + 10)
    return LoadResult(
        rate_cps=rate_cps,
        placed=res.created,
        successful=res.successful,
        failed=res.failed,
        elapsed_s=time.monotonic() - t0,
        returncode=res.returncode,
    )


# --- SIPp's records -------------------------------------------------------------------


def parse_stat_totals(stat_file: Path) -> tuple[int, int, int]:
    """(calls created, successful, failed) from the last row of a -trace_stat CSV."""
    if not stat_file.exists():
        return (0, 0, 0)
    with open(stat_file, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    if len(rows) < 2:
        return (0, 0, 0)
    head, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(head)}

    def val(name: str) -> int:
        return int(float(last[col[name]]))

    return (val("TotalCallCreated"), val("SuccessfulCall(C)"), val("FailedCall(C)"))


def parse_call_log(log_file: Path) -> dict[str, CallFacts]:
    """Per-call facts from the scenarios' "CDRCALL ..." log lines."""
    calls: dict[str, CallFacts] = {}
    if not log_file.exists():
        return calls
    for line in log_file.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "CDRCALL":
            continue
        call_id, event = parts[1], parts[2]
        ts = int(float(parts[3])) + int(float(parts[4])) / 1e6
        detail = parts[5] if len(parts) > 5 else ""
        c = calls.setdefault(call_id, CallFacts(call_id=call_id))
        if event == "INVITE":
            c.invite_ts = ts
        elif event == "RINGING":
            if c.ringing_ts is None:
                c.ringing_ts = ts
        elif event == "ANSWER":
            c.answer_ts, c.answered, c.final_code = ts, True, 200
        elif event == "BYE_SENT":
            c.end_ts, c.hangup = ts, "CALLER"
        elif event == "BYE_RECEIVED":
            c.end_ts, c.hangup = ts, "REMOTE"
        elif event == "CANCEL":
            c.end_ts, c.hangup = ts, "CALLER"
        elif event == "FAILED":
            if c.end_ts is None:
                c.end_ts = ts
            c.final_code = int(detail) if detail.isdigit() else None
    return calls
