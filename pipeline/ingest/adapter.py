"""The Kamailio adapter: evapi frames -> CallEvents on Kafka, the journal as backstop.

One thread, one loop (selectors): read evapi, map each frame, publish. Every
``checkpoint_interval_s`` the journal is read from the last position to its end;
an event there that did not arrive over evapi (the adapter was down, evapi was
disconnected, Kamailio relayed it after a crash of ours) is published from the
journal. Then both producers are flushed, and only if Kafka acknowledged everything
is the checkpoint moved to that end: whatever is after the checkpoint on disk may
not have reached Kafka, whatever is before it has. A restart (even after SIGKILL)
reads on from the checkpoint; event ids are deterministic, so what is published
twice is one event to the correlator.

Kafka down: records wait in the producer's bounded queue; when Kafka has not
acknowledged within ``delivery_timeout_s`` the adapter drops evapi (Kamailio keeps
writing the journal), rewinds to the checkpoint and reconnects with backoff, so the
journal, not memory, carries the events across the outage.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InvalidEvent
from pipeline.ingest import metrics
from pipeline.ingest.dead_letters import DeadLetters
from pipeline.ingest.journal import Checkpoint, JournalTail, Position, checkpoint_path
from pipeline.ingest.kamailio import map_frame
from pipeline.ingest.netstring import FramingError, NetstringReader
from pipeline.runtime.settings import KafkaSettings
from pipeline.switch.publisher import PublishError, SwitchPublisher

log = logging.getLogger(__name__)

_RECV = 1 << 16
_CONNECT_TIMEOUT_S = 3.0
_FLUSH_SLICE_S = 0.25
# Payloads seen on evapi and not yet met in the journal; beyond this many the oldest
# are forgotten (the journal then re-publishes them: a duplicate, not a loss).
_SEEN_MAX = 100_000


@dataclass(frozen=True)
class AdapterConfig:
    evapi_host: str
    evapi_port: int
    bootstrap: str
    topic: str
    dlq_topic: str
    journal: Path | None = None
    journal_from_end: bool = False  # no checkpoint yet: start at the journal's end
    state_dir: Path | None = None
    unknown_account: str = "UNIDENTIFIED"
    checkpoint_interval_s: float = 1.0
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 5.0
    delivery_timeout_s: float = 30.0
    # The [kafka] settings (security included); None: plaintext to `bootstrap`.
    kafka: KafkaSettings | None = None


@dataclass
class AdapterStats:
    frames: int = 0
    published: int = 0
    replayed: int = 0
    dead_letters: int = 0
    connections: int = 0


@dataclass
class _Link:
    """The evapi connection and the bookkeeping of its outages."""

    sock: socket.socket | None = None
    reader: NetstringReader = field(default_factory=NetstringReader)
    next_attempt: float = 0.0
    backoff: float = 0.0
    down_since: float | None = None  # monotonic time the current outage began
    attempts: int = 0


class KamailioAdapter:
    """Run with ``run()``; ``stop()`` (from a signal handler or another thread) ends it."""

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config
        self.stats = AdapterStats()
        self._evapi = f"evapi:{config.evapi_host}:{config.evapi_port}"
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._link = _Link(backoff=config.reconnect_initial_s)
        self._kafka_down_since: float | None = None
        self._seen: dict[bytes, None] = {}
        extra = {"message.timeout.ms": int(config.delivery_timeout_s * 1000)}
        kafka = config.kafka or config.bootstrap
        self._publisher = SwitchPublisher(kafka, config.topic, extra,
                                          queue_timeout_s=config.delivery_timeout_s)
        self._dlq = DeadLetters(kafka, config.dlq_topic, extra)
        self._checkpoint: Checkpoint | None = None
        self._tail: JournalTail | None = None
        self._saved: Position | None = None
        self._lagged_end: int | None = None  # the journal's size at the previous pass
        if config.journal is not None:
            self._checkpoint = Checkpoint(checkpoint_path(config.journal, config.state_dir))
            self._rewind()

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end: flush, checkpoint, return. Safe in a signal handler."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:  # the wake socket is full (already woken) or closed
            pass

    def ready(self) -> tuple[bool, str]:
        """For the readiness probe: connected to evapi and Kafka acknowledging."""
        if self._link.sock is None:
            return False, f"not connected to {self._evapi}"
        if self._kafka_down_since is not None:
            return False, "Kafka is not acknowledging"
        return True, f"connected to {self._evapi}"

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> AdapterStats:
        if self._tail is None:
            log.warning("no --journal: events Kamailio sends while the adapter is not connected "
                        "are lost (no backstop)")
        next_checkpoint = time.monotonic()
        try:
            while not self._stopping:
                now = time.monotonic()
                if self._link.sock is None and now >= self._link.next_attempt:
                    if self._connect(now):
                        next_checkpoint = now  # catch up from the journal right away
                if now >= next_checkpoint:
                    self._safely(self._sync)
                    next_checkpoint = time.monotonic() + self.config.checkpoint_interval_s
                wake_at = next_checkpoint
                if self._link.sock is None:
                    wake_at = min(wake_at, self._link.next_attempt)
                self._wait(max(0.0, wake_at - time.monotonic()))
            self._shutdown()
        finally:
            self._close()
        return self.stats

    def _wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._wake_r:
                self._drain_wake()
            else:
                self._safely(self._receive)
        self._publisher.poll(0)
        self._dlq.poll()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(1024):
                pass
        except BlockingIOError:
            pass

    def _safely(self, step: Callable[[], None]) -> None:
        """Run a step; a Kafka failure turns into an outage, not an exit."""
        try:
            step()
        except PublishError as exc:
            self._kafka_outage(exc)

    # -- evapi ---------------------------------------------------------------------------

    def _connect(self, now: float) -> bool:
        link, cfg = self._link, self.config
        link.attempts += 1
        try:
            sock = socket.create_connection((cfg.evapi_host, cfg.evapi_port),
                                            timeout=_CONNECT_TIMEOUT_S)
        except OSError as exc:
            if link.down_since is None:
                link.down_since = now
                log.warning("cannot connect to %s: %s; retrying with backoff up to %ss "
                            "(logged once until connected)", self._evapi,
                            exc.strerror or exc, cfg.reconnect_max_s)
            link.next_attempt = now + link.backoff
            link.backoff = min(link.backoff * 2, cfg.reconnect_max_s)
            return False
        sock.setblocking(False)
        link.sock, link.reader = sock, NetstringReader()
        self._selector.register(sock, selectors.EVENT_READ)
        if self.stats.connections:
            metrics.RECONNECTS.inc()
        self.stats.connections += 1
        metrics.CONNECTED.set(1)
        if link.down_since is None:
            log.info("connected to %s", self._evapi)
        else:
            log.info("connected to %s again after %.1fs (%s attempts)", self._evapi,
                     now - link.down_since, link.attempts)
        link.down_since, link.attempts, link.backoff = None, 0, cfg.reconnect_initial_s
        return True

    def _disconnect(self, why: str, retry_now: bool = False, level: int = logging.WARNING) -> None:
        link = self._link
        if link.sock is None:
            return
        self._selector.unregister(link.sock)
        link.sock.close()
        link.sock = None
        metrics.CONNECTED.set(0)
        now = time.monotonic()
        link.down_since = now
        link.next_attempt = now if retry_now else now + link.backoff
        log.log(level, "disconnected from %s: %s", self._evapi, why)

    def _receive(self) -> None:
        sock = self._link.sock
        if sock is None:
            return
        try:
            data = sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError as exc:
            self._disconnect(exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc)))
            return
        if not data:
            self._disconnect("connection closed by Kamailio")
            return
        try:
            frames = self._link.reader.feed(data)
        except FramingError as exc:
            # Frames before the bad one were returned by earlier feeds; what follows it
            # cannot be found again in this stream: a new connection (and the journal).
            self._disconnect(f"framing error ({exc}); the stream cannot be resynchronised",
                             retry_now=True)
            return
        for payload in frames:
            self.stats.frames += 1
            metrics.FRAMES.inc()
            if self._tail is not None:
                self._remember(payload)
            self._handle(payload, self._evapi, "evapi")

    def _remember(self, payload: bytes) -> None:
        self._seen[payload] = None
        if len(self._seen) > _SEEN_MAX:
            del self._seen[next(iter(self._seen))]

    # -- events ----------------------------------------------------------------------------

    def _handle(self, payload: bytes, where: str, source: str) -> None:
        try:
            event = map_frame(payload, self.config.unknown_account)
        except InvalidEvent as exc:
            self._dlq.send(payload, exc.reason, exc.category, where)
            self.stats.dead_letters += 1
            metrics.DEAD_LETTERS.labels(exc.category).inc()
            log.warning("%s: frame to dead-letter: %s", where, exc.reason)
            return
        self._publisher.publish(event)
        self.stats.published += 1
        metrics.PUBLISHED.labels(source).inc()

    # -- journal and checkpoint ------------------------------------------------------------

    def _rewind(self) -> None:
        """Back to the saved checkpoint: after a start, or when Kafka may have lost records."""
        assert self._checkpoint is not None and self.config.journal is not None
        if self._tail is not None:
            self._tail.close()
        self._saved = self._checkpoint.load()
        if self._saved is None and self.config.journal_from_end:
            self._saved = self._journal_end()
            if self._saved is not None:
                self._checkpoint.save(self._saved)
                log.info("journal %s: no checkpoint, starting at its end (offset %s) as asked",
                         self.config.journal, self._saved.offset)
        self._tail = JournalTail(self.config.journal, self._saved)
        self._seen.clear()
        if self._saved is not None:
            metrics.CHECKPOINT.set(self._saved.offset)
        level = logging.INFO if self._kafka_down_since is None else logging.DEBUG
        log.log(level, "journal %s from %s", self.config.journal,
                 f"offset {self._saved.offset}" if self._saved else "its start (no checkpoint)")

    def _journal_end(self) -> Position | None:
        """Where the journal ends now, after its last complete line; None if there is none."""
        assert self.config.journal is not None
        try:
            with self.config.journal.open("rb") as journal:
                data_end = journal.seek(0, 2)
                journal.seek(max(0, data_end - 65536))
                tail = journal.read()
                inode = os.fstat(journal.fileno()).st_ino
        except FileNotFoundError:
            return None
        return Position(inode, data_end - len(tail) + tail.rfind(b"\n") + 1)

    def _sync(self, abort_on_stop: bool = True) -> None:
        """Publish what only the journal has; once Kafka acknowledged all, checkpoint."""
        position: Position | None = None
        if self._tail is not None:
            where = f"journal:{self._tail.path}"
            # Kamailio writes the journal line just before it relays the frame, so
            # while evapi is connected the newest lines' frames may still be on
            # their way: read only as far as the journal reached at the pass before
            # (one interval ago), or those events would go out twice.
            until = self._lagged_end if self._link.sock is not None else None
            self._lagged_end = self._tail.size()
            for payload in self._tail.read(until):
                if payload in self._seen:
                    del self._seen[payload]
                    continue
                self._handle(payload, where, "journal")
                self.stats.replayed += 1
                metrics.JOURNAL_REPLAYED.inc()
            position = self._tail.position
        if not self._flush(abort_on_stop):
            return
        if self._kafka_down_since is not None:
            log.info("Kafka acknowledges again after %.1fs",
                     time.monotonic() - self._kafka_down_since)
            self._kafka_down_since = None
        if position is not None and self._checkpoint is not None and position != self._saved:
            self._checkpoint.save(position)
            self._saved = position
            metrics.CHECKPOINT.set(position.offset)

    def _flush(self, abort_on_stop: bool) -> bool:
        """Flush both producers in slices (a stop is not held up by a dead broker);
        True once everything is acknowledged, PublishError after delivery_timeout_s."""
        deadline = time.monotonic() + self.config.delivery_timeout_s
        while True:
            try:
                self._publisher.flush(_FLUSH_SLICE_S)
                self._dlq.flush(_FLUSH_SLICE_S)
                return True
            except PublishError as exc:
                if exc.code != "FLUSH_TIMEOUT":
                    raise
                if time.monotonic() >= deadline:
                    raise PublishError(
                        f"records not acknowledged within {self.config.delivery_timeout_s}s "
                        f"(topic {exc.topic!r})", exc.topic, code=exc.code) from None
            if abort_on_stop and self._stopping:
                return False

    def _kafka_outage(self, exc: PublishError) -> None:
        metrics.KAFKA_OUTAGES.inc()
        if self._kafka_down_since is None:
            self._kafka_down_since = time.monotonic()
            log.error("Kafka did not take the events (%s); dropping evapi and resuming from "
                      "the journal checkpoint once it does (logged once until it does)", exc)
        else:
            log.debug("Kafka still not acknowledging: %s", exc)
        self._disconnect("Kafka is not acknowledging", level=logging.DEBUG)
        if self._tail is not None:
            self._rewind()

    def _shutdown(self) -> None:
        self._disconnect("stopping", level=logging.INFO)
        try:
            self._sync(abort_on_stop=False)
        except PublishError as exc:
            log.error("stopping with records not acknowledged by Kafka (%s); they are after "
                      "the journal checkpoint and are published again on the next start", exc)
            return
        log.info("stopped: %s frames, %s events published (%s from the journal), "
                 "%s dead letters", self.stats.frames, self.stats.published,
                 self.stats.replayed, self.stats.dead_letters)

    def _close(self) -> None:
        if self._tail is not None:
            self._tail.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        metrics.CONNECTED.set(0)
