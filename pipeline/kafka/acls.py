"""Who may do what on a secured cluster: the pipeline's Kafka ACLs as data.

One principal per component, each allowed only its job (docs/security.md has the
table, rendered from `pipeline_grants` by `grants_table`):

- `admin` creates, describes and deletes the pipeline's topics (and nothing else: no
  reading, no writing);
- `publisher` writes `call-events` (idempotently: WRITE on the topic is all an
  idempotent producer needs since Kafka 3.0);
- `ingest` (the switch adapters) writes `call-events` and its dead-letter topic;
- `worker` reads `call-events` in its group (the Faust app id), writes `cdrs` and
  `call-events.dlq`, and owns the topics Faust makes under its app id (changelog,
  assignor leader);
- `sink` reads `cdrs` in its group and writes `cdrs.dlq`;
- `rerate` reads `call-events` under groups of its own prefix (it never commits).

The broker's own principal (`broker`) is the one super user; it applies these ACLs
(`python -m pipeline.kafka.acls apply`, run by deploy/local/secure.sh) and sets the
principals' SCRAM passwords from their secret files (`... users DIR`: how a password
is rotated, docs/security.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.kafka.admin import CALL_EVENTS, CALL_EVENTS_DLQ, CDRS, CDRS_DLQ

RERATE_GROUP_PREFIX = "cdr-rerate-"  # pipeline.rerate.runner names its groups so


@dataclass(frozen=True)
class Grant:
    """`principal` may do `operations` on the `resource` (topic, group) `name`, taken
    literally or as a name prefix (`prefixed`)."""

    principal: str
    resource: str
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False

    def describe(self) -> str:
        pattern = f"{self.name}*" if self.prefixed else self.name
        return f"{self.principal}: {', '.join(self.operations)} on {self.resource} {pattern}"


def pipeline_grants(
    prefix: str = "",
    app_id: str = "cdr-correlator",
    sink_group: str = "cdr-sink",
    rerate_group_prefix: str = RERATE_GROUP_PREFIX,
) -> list[Grant]:
    """The ACLs of one deployment: topics named with `prefix` (the [kafka] topic_prefix),
    the worker's app id and the sink's group."""
    events, cdrs = f"{prefix}{CALL_EVENTS}", f"{prefix}{CDRS}"
    events_dlq, cdrs_dlq = f"{prefix}{CALL_EVENTS_DLQ}", f"{prefix}{CDRS_DLQ}"
    admin_ops = ("CREATE", "DELETE", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS")
    write, read = ("WRITE", "DESCRIBE"), ("READ", "DESCRIBE")
    return [
        Grant("admin", "topic", prefix or "*", admin_ops, prefixed=bool(prefix)),
        Grant("publisher", "topic", events, write),
        Grant("ingest", "topic", events, write),
        Grant("ingest", "topic", events_dlq, write),
        Grant("worker", "topic", events, read),
        Grant("worker", "group", app_id, read),
        Grant("worker", "topic", cdrs, write),
        Grant("worker", "topic", events_dlq, write),
        Grant("worker", "topic", f"{app_id}-",
              ("CREATE", "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"), prefixed=True),
        Grant("sink", "topic", cdrs, read),
        Grant("sink", "group", sink_group, read),
        Grant("sink", "topic", cdrs_dlq, write),
        Grant("rerate", "topic", events, read),
        Grant("rerate", "group", rerate_group_prefix, read, prefixed=True),
    ]


def grants_table(grants: Sequence[Grant]) -> str:
    """The grants as a Markdown table (docs/security.md carries the default one)."""
    rows = ["| principal | resource | name | operations |", "|---|---|---|---|"]
    for g in grants:
        name = f"`{g.name}`*" if g.prefixed else f"`{g.name}`"
        rows.append(f"| {g.principal} | {g.resource} | {name} | {', '.join(g.operations)} |")
    return "\n".join(rows)


def _bindings(grants: Sequence[Grant], filters: bool = False) -> list[Any]:
    """The AclBindings of `grants` (AclBindingFilters matching exactly them: `filters`)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    make = AclBindingFilter if filters else AclBinding
    out: list[Any] = []
    for g in grants:
        pattern = ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL
        for op in g.operations:
            out.append(make(kinds[g.resource], g.name, pattern, f"User:{g.principal}", "*",
                            AclOperation[op], AclPermissionType.ALLOW))
    return out


def apply_grants(kafka: Any, grants: Sequence[Grant], timeout_s: float = 30) -> int:
    """Create the ACLs (idempotent: an existing ACL is left as it is); returns how many
    bindings were sent. `kafka` must be a principal allowed to alter ACLs (the broker's)."""
    return _run(kafka, grants, timeout_s, remove=False)


def remove_grants(kafka: Any, grants: Sequence[Grant], timeout_s: float = 30) -> int:
    """Delete exactly these ACLs (a test's or a finished run's)."""
    return _run(kafka, grants, timeout_s, remove=True)


def missing_grants(kafka: Any, grants: Sequence[Grant], timeout_s: float = 30) -> list[Grant]:
    """The grants of which the cluster lacks an ACL (a check that a cluster, the single
    node or the three brokers, holds the table). `kafka` must be allowed to describe
    ACLs (the broker's principal)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    admin = _admin(kafka, "cdr-pipeline-acls")
    # None: any name, principal, host (the stubs type them str only)
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY,  # type: ignore[arg-type]
                             None, None, AclOperation.ANY, AclPermissionType.ANY)  # type: ignore[arg-type]
    try:
        held = set(admin.describe_acls(every, request_timeout=timeout_s).result(timeout_s + 5))
    except KafkaException as exc:
        raise PipelineError(f"cannot describe Kafka ACLs: {exc.args[0]}") from None
    return [g for g in grants if not set(_bindings([g])) <= held]


def _admin(kafka: Any, client_id: str) -> Any:
    """An AdminClient of `kafka`'s cluster (settings or a bootstrap string)."""
    from confluent_kafka.admin import AdminClient

    from pipeline.kafka.clients import client_config, settings_of

    return AdminClient(client_config(settings_of(kafka), **{
        "client.id": client_id, "logger": logging.getLogger(f"{__name__}.librdkafka")}))


def _run(kafka: Any, grants: Sequence[Grant], timeout_s: float, remove: bool) -> int:
    from confluent_kafka import KafkaException

    admin = _admin(kafka, "cdr-pipeline-acls")
    bindings = _bindings(grants, filters=remove)
    what = "delete" if remove else "create"
    try:
        if remove:
            futures: dict[Any, Any] = admin.delete_acls(bindings, request_timeout=timeout_s)
        else:
            futures = admin.create_acls(bindings, request_timeout=timeout_s)
        for future in futures.values():
            future.result(timeout=timeout_s + 5)
    except KafkaException as exc:
        raise PipelineError(f"cannot {what} Kafka ACLs: {exc.args[0]}") from None
    return len(bindings)


SCRAM_ITERATIONS = 8192


def upsert_users(kafka: Any, passwords: dict[str, str], timeout_s: float = 30) -> list[str]:
    """Create or replace the SCRAM-SHA-512 credential of each user (name -> password);
    returns the names. Connections already authenticated stay so; new ones need the new
    password. `kafka` must be allowed to alter the cluster (the broker's principal)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # no __all__ there
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = _admin(kafka, "cdr-pipeline-users")
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    changes = [UserScramCredentialUpsertion(name, info, password.encode("utf-8"))
               for name, password in sorted(passwords.items())]
    if not changes:
        return []
    try:
        for future in admin.alter_user_scram_credentials(changes).values():
            future.result(timeout=timeout_s)
    except KafkaException as exc:
        raise PipelineError(f"cannot set SCRAM credentials: {exc.args[0]}") from None
    return sorted(passwords)


def passwords_in(folder: Path) -> dict[str, str]:
    """The Kafka principals' passwords in `folder`: files kafka-NAME.password (what
    deploy/local/secure.sh writes) or kafka_NAME (compose secrets), the broker's left out
    (its credential is made when its storage is formatted)."""
    out = {}
    for path in sorted(folder.iterdir()):
        name = path.name.removesuffix(".password")
        for lead in ("kafka-", "kafka_"):
            if name.startswith(lead) and name != f"{lead}broker":
                out[name[len(lead):]] = path.read_text(encoding="utf-8").strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.kafka.acls apply|remove|table [--prefix P --app-id A
    --sink-group G]`, connecting with the [kafka] settings from the environment."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.kafka.acls",
                                     description="Apply, remove or print the pipeline's ACLs.")
    parser.add_argument("action", choices=("apply", "remove", "table", "users", "setup"),
                        help="setup = users, then apply, then the pipeline's topics")
    parser.add_argument("folder", nargs="?", type=Path,
                        help="users, setup: the folder of the kafka-NAME.password files")
    parser.add_argument("--prefix", default="", help="topic prefix ([kafka] topic_prefix)")
    parser.add_argument("--app-id", default="cdr-correlator", help="the worker's app id")
    parser.add_argument("--sink-group", default="cdr-sink", help="the sink's group")
    args = parser.parse_args(argv)
    grants = pipeline_grants(args.prefix, args.app_id, args.sink_group)
    if args.action == "table":
        print(grants_table(grants))
        return 0
    from pipeline.runtime.settings import load_settings

    try:
        kafka = load_settings().kafka
        if args.action in ("users", "setup"):
            if args.folder is None or not args.folder.is_dir():
                raise PipelineError(f"{args.action}: give the folder of the kafka-NAME.password "
                                    "files")
            names = upsert_users(kafka, passwords_in(args.folder))
            print(f"acls: SCRAM credentials set for {', '.join(names) or 'nobody'}")
            if args.action == "users":
                return 0
        count = (apply_grants if args.action != "remove" else remove_grants)(kafka, grants)
        if args.action == "setup":
            from pipeline.kafka.admin import default_topic_specs, ensure_topics

            specs = default_topic_specs(args.prefix, kafka.partitions, kafka.replication_factor)
            created = ensure_topics(kafka, specs)
            print(f"acls: topics created: {', '.join(created) or 'none (all there)'}")
    except PipelineError as exc:
        print(f"acls: error: {exc}", file=sys.stderr)
        return 2
    print(f"acls: {args.action}: {count} bindings for {len(grants)} grants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
