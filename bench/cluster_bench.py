"""Benchmark: the ClickHouse 2 x 2 cluster beside one server, in the same run (not a test).

    .venv/bin/python bench/cluster_bench.py [--rows N] [--batch N] [--rounds N]
        [--calls N] [--days N] [--reps N] [--skip-sink] [--skip-dashboard] [--keep]

Needs the single server (deploy/local/clickhouse.sh up, native 19000) and the cluster
(clickhouse.sh up --cluster, native 19100-19103). Two parts:

1. The sink's insert path (`insert_cdr_rows`, batches of --batch rows with their
   deduplication token, as `cdr-pipeline sink` sends them), --rows rows per mode, --rounds
   rounds with the modes interleaved, each mode into a database of its own:
     single       one server, MergeTree
     distributed  the cluster through the Distributed table (insert_distributed_sync, at
                  insert_quorum 2: what the sink does on a cluster)
     dist-q1      the same without the quorum (acknowledged by one replica per shard)
     direct       straight into each shard's local table by cityHash64(call_id) % 2 (the
                  shard of each row asked of the server), both shards in parallel, at
                  insert_quorum 2
   It prints rows/s per mode, the ratio to one server, and where the CPU went (this
   process, the single server, the cluster's servers, ZooKeeper).
2. The dashboard: --calls synthetic calls (default ten million over 30 days, plus a 5 %
   re-rating) loaded server-side into one server and into the cluster, a full refresh of
   the aggregates on each (timed), then every panel of bench/dashboard_bench.py's scopes
   --reps times on each, through the Distributed tables on the cluster: p50 / p99 side
   by side and their ratio, and whether both give the same figures.

The machine has 2 cores and may be shared: figures are only comparable within one run
(the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dashboard_bench import END_MS, percentile, scenarios  # noqa: E402

from pipeline.dashboard.queries import PANELS, run_panel  # noqa: E402
from pipeline.dashboard.refresh import refresh_aggregates  # noqa: E402
from pipeline.dashboard.synthetic import insert_sql_cdrs, python_cdrs  # noqa: E402
from pipeline.storage.backend import ClickHouseBackend  # noqa: E402
from pipeline.storage.cdr_store import CDR_COLUMNS, cdr_row, insert_cdr_rows, row_digest  # noqa: E402
from pipeline.storage.cluster import CLUSTER_INSERT_SETTINGS, batch_stamp  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402
from pipeline.storage.native import NativeBackend  # noqa: E402

HOST = "127.0.0.1"
SINGLE_PORT = 19000
CLUSTER_PORTS = (19100, 19101, 19102, 19103)
CLUSTER = "cdr_cluster"
STACK = ROOT / ".stack"
MODES = ("single", "distributed", "dist-q1", "direct")


# -- CPU accounting ---------------------------------------------------------------------


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now() -> dict[str, float]:
    """CPU seconds so far: this process, the single server, the cluster, ZooKeeper."""
    cluster = sum(
        _cpu_s(_pid(STACK / "clickhouse-cluster" / f"node{n}" / "clickhouse-server.pid"))
        for n in (1, 2, 3, 4)
    )
    return {
        "bench": time.process_time(),
        "single": _cpu_s(_pid(STACK / "clickhouse" / "clickhouse-server.pid")),
        "cluster": cluster,
        "zookeeper": _cpu_s(_pid(STACK / "zookeeper" / "zookeeper.pid")),
    }


def cpu_delta(before: dict[str, float]) -> dict[str, float]:
    after = cpu_now()
    return {k: after[k] - before[k] for k in before}


# -- part 1: the sink's inserts ------------------------------------------------------------


def make_batches(rows: int, batch: int, prefix: str) -> list[list[tuple[Any, ...]]]:
    """`rows` cdr rows as the sink holds them (cdr_row of a decoded record), in batches."""
    out: list[tuple[Any, ...]] = []
    for record in python_cdrs(rows, END_MS - 86_400_000, 86_400_000, seed=5, prefix=prefix):
        record["flags"] = list(record.get("flags") or [])
        out.append(cdr_row(record))
    return [out[i : i + batch] for i in range(0, len(out), batch)]


class DirectShards:
    """Inserts straight into each shard's `cdr_local`: the shard of each row from the
    server's cityHash64 (one query per batch), then both shards in parallel threads."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.router = NativeBackend(HOST, CLUSTER_PORTS[0])
        self.shards = [NativeBackend(HOST, CLUSTER_PORTS[0]), NativeBackend(HOST, CLUSTER_PORTS[2])]
        self.columns = [name for name, _ in CDR_COLUMNS] + ["inserted_at"]

    def insert(self, rows: Sequence[tuple[Any, ...]], token: str) -> None:
        ids = [row[0] for row in rows]
        ((shard_of,),) = self.router.execute(
            "SELECT arrayMap(x -> cityHash64(x) % 2, {ids:Array(String)})", {"ids": ids}
        )
        stamp = batch_stamp(token)
        parts: list[list[tuple[Any, ...]]] = [[], []]
        for row, shard in zip(rows, shard_of, strict=True):
            parts[shard].append((*row, stamp))
        errors: list[BaseException] = []

        def send(k: int) -> None:
            try:
                data = [list(col) for col in zip(*parts[k], strict=True)]
                self.shards[k].insert_columns(
                    f"{self.database}.cdr_local", self.columns, data, token,
                    settings={"insert_quorum": 2, "insert_quorum_timeout": 15_000},
                )
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(k,)) for k in (0, 1) if parts[k]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        for backend in (self.router, *self.shards):
            backend.close()


class NoQuorum:
    """The Distributed insert without the quorum: shows what the quorum costs."""

    def __init__(self, backend: NativeBackend, database: str) -> None:
        self.backend, self.database = backend, database
        self.columns = [name for name, _ in CDR_COLUMNS] + ["inserted_at"]

    def insert(self, rows: Sequence[tuple[Any, ...]], token: str) -> None:
        data = [list(col) for col in zip(*rows, strict=True)]
        data.append([batch_stamp(token)] * len(rows))
        settings = {**CLUSTER_INSERT_SETTINGS, "insert_quorum": 0}
        self.backend.insert_columns(f"{self.database}.cdr", self.columns, data, token,
                                    settings=settings)


def sink_part(args: argparse.Namespace) -> None:
    print(f"\n== sink inserts: {args.rows:,} rows per mode and round, batches of {args.batch}, "
          f"{args.rounds} rounds")
    tag = uuid.uuid4().hex[:6]
    single = NativeBackend(HOST, SINGLE_PORT)
    node1 = NativeBackend(HOST, CLUSTER_PORTS[0])
    dbs = {mode: f"cbench_{mode.replace('-', '')}_{tag}" for mode in MODES}
    migrate(single, dbs["single"])
    for mode in MODES[1:]:
        migrate(node1, dbs[mode], cluster=CLUSTER)
    direct = DirectShards(dbs["direct"])
    noquorum = NoQuorum(node1, dbs["dist-q1"])
    inserters: dict[str, Callable[[Sequence[tuple[Any, ...]], str], None]] = {
        "single": lambda rows, tok: insert_cdr_rows(single, rows, tok, dbs["single"]),
        "distributed": lambda rows, tok: insert_cdr_rows(node1, rows, tok, dbs["distributed"]),
        "dist-q1": noquorum.insert,
        "direct": direct.insert,
    }
    seconds = {m: 0.0 for m in MODES}
    cpu = {m: {"bench": 0.0, "single": 0.0, "cluster": 0.0, "zookeeper": 0.0} for m in MODES}
    try:
        for rnd in range(args.rounds):
            batches = make_batches(args.rows, args.batch, f"r{rnd}")
            tokens = [row_digest(b) for b in batches]
            for mode in MODES:
                before, started = cpu_now(), time.perf_counter()
                for batch, token in zip(batches, tokens, strict=True):
                    inserters[mode](batch, token)
                seconds[mode] += time.perf_counter() - started
                for k, v in cpu_delta(before).items():
                    cpu[mode][k] += v
        total = args.rows * args.rounds
        print(f"{'mode':<12} {'rows/s':>9} {'vs single':>9}   CPU s: {'bench':>6} {'single':>7} "
              f"{'cluster':>8} {'zk':>5}   (wall {'s':>5})")
        for mode in MODES:
            rate = total / seconds[mode]
            c = cpu[mode]
            print(f"{mode:<12} {rate:9,.0f} {rate / (total / seconds['single']):9.2f}   "
                  f"       {c['bench']:6.1f} {c['single']:7.1f} {c['cluster']:8.1f} "
                  f"{c['zookeeper']:5.1f}   ({seconds[mode]:5.1f})")
        counts = {m: _count(single if m == "single" else node1, dbs[m]) for m in MODES}
        print(f"rows stored (FINAL): {counts}")
    finally:
        direct.close()
        if not args.keep:
            single.execute(f"DROP DATABASE IF EXISTS {dbs['single']}")
            for mode in MODES[1:]:
                node1.execute(f"DROP DATABASE IF EXISTS {dbs[mode]} ON CLUSTER {CLUSTER}")
        single.close()
        node1.close()


def _count(backend: ClickHouseBackend, db: str) -> int:
    return int(backend.execute(f"SELECT count() FROM {db}.cdr FINAL")[0][0])


# -- part 2: the dashboard ------------------------------------------------------------------


def load(backend: NativeBackend, database: str, calls: int, days: int, cluster: str | None
         ) -> None:
    started, cpu = time.perf_counter(), cpu_now()
    migrate(backend, database, cluster=cluster)
    insert_sql_cdrs(backend, database, calls, END_MS, days)
    insert_sql_cdrs(backend, database, calls, END_MS, days, version=1001, rerate_percent=5,
                    fee_factor_percent=110)
    loaded = time.perf_counter() - started
    refresh_started = time.perf_counter()
    result = refresh_aggregates(backend, database, full=True)
    used = cpu_delta(cpu)
    print(f"{'cluster' if cluster else 'single':<8} loaded {calls:,} calls in {loaded:6.1f} s; "
          f"full refresh {time.perf_counter() - refresh_started:6.1f} s "
          f"({result.rows_written:,} aggregate rows); server CPU "
          f"{used['cluster'] if cluster else used['single']:.0f} s, zk {used['zookeeper']:.1f} s")


def dashboard_part(args: argparse.Namespace) -> None:
    print(f"\n== dashboard: {args.calls:,} calls over {args.days} days, {args.reps} runs per panel")
    database = f"cbench_dash_{uuid.uuid4().hex[:6]}"
    writers = {"single": NativeBackend(HOST, SINGLE_PORT, send_receive_timeout=1800),
               "cluster": NativeBackend(HOST, CLUSTER_PORTS[0], send_receive_timeout=1800)}
    readers = {name: NativeBackend(HOST, port, settings={"readonly": 2,
                                                          "use_uncompressed_cache": 1})
               for name, port in (("single", SINGLE_PORT), ("cluster", CLUSTER_PORTS[0]))}
    try:
        load(writers["single"], database, args.calls, args.days, None)
        load(writers["cluster"], database, args.calls, args.days, CLUSTER)
        print(f"\n{'scope':<26} {'panel':<15} {'1 p50':>7} {'1 p99':>7} {'2x2 p50':>8} "
              f"{'2x2 p99':>8} {'p50 x':>6}  same")
        ratios = []
        for label, scope in scenarios(args.days).items():
            for name in PANELS:
                times: dict[str, list[float]] = {"single": [], "cluster": []}
                results: dict[str, Any] = {}
                for side in ("single", "cluster"):
                    run_panel(readers[side], database, name, scope)  # warm-up
                for _ in range(args.reps):  # interleaved, so drift hits both alike
                    for side in ("single", "cluster"):
                        started = time.perf_counter()
                        results[side] = run_panel(readers[side], database, name, scope, top=None)
                        times[side].append((time.perf_counter() - started) * 1000)
                p50 = {s: statistics.median(t) for s, t in times.items()}
                ratios.append(p50["cluster"] / p50["single"])
                same = results["single"].rows == results["cluster"].rows
                print(f"{label:<26} {name:<15} {p50['single']:7.1f} "
                      f"{percentile(times['single'], 0.99):7.1f} {p50['cluster']:8.1f} "
                      f"{percentile(times['cluster'], 0.99):8.1f} {ratios[-1]:6.2f}  "
                      f"{'yes' if same else 'NO'}", flush=True)
        print(f"\ncluster / single, p50 per panel: median {statistics.median(ratios):.2f}, "
              f"max {max(ratios):.2f}")
    finally:
        if not args.keep:
            writers["single"].execute(f"DROP DATABASE IF EXISTS {database}")
            writers["cluster"].execute(f"DROP DATABASE IF EXISTS {database} ON CLUSTER {CLUSTER}")
        for backend in (*writers.values(), *readers.values()):
            backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per mode and round")
    parser.add_argument("--batch", type=int, default=5000, help="rows per insert (sink default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--reps", type=int, default=20, help="runs per panel and side")
    parser.add_argument("--skip-sink", action="store_true")
    parser.add_argument("--skip-dashboard", action="store_true")
    parser.add_argument("--keep", action="store_true", help="do not drop the databases")
    args = parser.parse_args()
    print(f"cluster bench: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          "(a shared machine: compare within this run only)")
    if not args.skip_sink:
        sink_part(args)
    if not args.skip_dashboard:
        dashboard_part(args)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
