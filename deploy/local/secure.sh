#!/usr/bin/env bash
# The secured local stack (docs/security.md): Kafka with SASL_SSL, mTLS and ACLs, and a
# ClickHouse with TLS on its native port and one password-protected user per component.
# It runs beside the plaintext stack (stack.sh), on ports of its own:
#
#   deploy/local/secure.sh up       certificates, passwords, Kafka, ACLs, topics, ClickHouse,
#                                   schema (each made only when missing)
#   deploy/local/secure.sh down     stop Kafka, and ClickHouse unless the other Kafka uses it
#   deploy/local/secure.sh status   whether they run
#   deploy/local/secure.sh reset    down (the cluster's too), then delete .stack/secure/
#   deploy/local/secure.sh env NAME the identity file of component NAME (see below)
#   deploy/local/secure.sh rotate-password NAME   a new password for Kafka principal NAME
#                                   (e.g. publisher) or ClickHouse user NAME (e.g. cdr_sink)
#   deploy/local/secure.sh rotate-cert              a new server certificate (same CA);
#                                   restarts the secured Kafka(s) running and ClickHouse
#   deploy/local/secure.sh compose  certificates, secrets and server configuration for
#                                   docker-compose.secure.yml, in .stack/compose/ (once)
#   up|down|status|reset|env ... --cluster   the same for the secured three-broker cluster
#                                   (topics RF 3, min.insync.replicas 2) with the same CA,
#                                   secrets, principals, ACLs and ClickHouse; reset --cluster
#                                   deletes only its Kafka state and identities
#
# Kafka     SASL_SSL 127.0.0.1:39092 (SCRAM-SHA-512), mTLS 127.0.0.1:39094, controller 39093
# cluster   SASL_SSL 127.0.0.1:49092,49192,49292, mTLS 49094,49194,49294, controllers 49093,
#           49193,49293 (mTLS)
# ClickHouse native TLS 127.0.0.1:39440 (no plaintext port, no HTTP port)
#
# .stack/secure/tls/          the CA, the servers' and the clients' certificates (tls.sh)
# .stack/secure/secrets/      passwords (mode 0600), one per Kafka principal and ClickHouse user
# .stack/secure/identities/   NAME.env: the CDR_* settings of one component (paths of the
#                             secret files, never a secret itself), for instance
#                               set -a; . .stack/secure/identities/worker.env; set +a
#                               .venv/bin/cdr-pipeline worker --config deploy/demo/demo.toml
#                             NAME: admin migrate publisher ingest worker sink rerate dashboard
#                             report refresh broker, and NAME-mtls for the Kafka principals
# .stack/secure/identities-cluster/  the same names for the cluster (its bootstrap, RF 3)
#
# Environment: CDR_SECURE_DATABASES ("cdr cdr_test": the databases the ClickHouse users
# may use), CDR_CH_MAX_MEMORY_BYTES (2147483648), CDR_SECURE_PARTITIONS (3: partitions of
# the topics made at `up`).
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$HERE/../.." && pwd -P)"
BASE="$ROOT/.stack/secure"
TLS="$BASE/tls"
SECRETS="$BASE/secrets"
CLUSTER=0
ARGS=()
for a in "$@"; do
    if [ "$a" = --cluster ]; then CLUSTER=1; else ARGS+=("$a"); fi
done
set -- ${ARGS[@]+"${ARGS[@]}"}
CH="$BASE/clickhouse"
PY="$ROOT/.venv/bin/python"
HOST=127.0.0.1
# The secured Kafka this run is about: the single node, or with --cluster the three
# brokers (their addresses from kafka.sh, which lays the nodes out). The other one is
# OTHER_FLAGS: ClickHouse, which both use, stops with the last of them.
if [ "$CLUSTER" = 1 ]; then
    IDS="$BASE/identities-cluster"
    KAFKA_FLAGS=(--cluster --secure)
    OTHER_FLAGS=(--secure)
    REPLICATION=3
else
    IDS="$BASE/identities"
    KAFKA_FLAGS=(--secure)
    OTHER_FLAGS=(--cluster --secure)
    REPLICATION=1
fi
KAFKA_SASL_BOOTSTRAP="$("$HERE/kafka.sh" bootstrap "${KAFKA_FLAGS[@]}")"
KAFKA_MTLS_BOOTSTRAP="$("$HERE/kafka.sh" mtls-bootstrap "${KAFKA_FLAGS[@]}")"
CH_PORT=39440
DATABASES="${CDR_SECURE_DATABASES:-cdr cdr_test}"
MAX_MEMORY="${CDR_CH_MAX_MEMORY_BYTES:-2147483648}"
PARTITIONS="${CDR_SECURE_PARTITIONS:-3}"
CH_START_TIMEOUT=60
CH_STOP_TIMEOUT=30

KAFKA_PRINCIPALS=(broker admin publisher ingest worker sink rerate)
CH_USERS=(cdr_migrate cdr_sink cdr_rerate cdr_dashboard cdr_report cdr_refresh)

log() { printf 'secure.sh: %s\n' "$*" >&2; }
die() { printf 'secure.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=deploy/local/lib.sh
. "$HERE/lib.sh"
usage() { sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- secrets
new_secret() {  # file: 32 random characters, mode 0600, made only when missing
    [ -s "$1" ] && return 0
    (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | head -c 32 >"$1.tmp")
    mv "$1.tmp" "$1"
}

# A new password for principal or user NAME, with nothing lost: the server learns it first
# (Kafka: the SCRAM credential is replaced; ClickHouse: users.xml is rewritten and re-read
# within seconds), then the secret file changes. Connections already open stay open; a
# component restarted (SIGTERM: it flushes and commits first) logs in with the new one
# and resumes from its committed offsets (docs/security.md, Rotation).
cmd_rotate_password() {
    local name="$1" file tmp ids
    if [ -f "$SECRETS/kafka-$name.password" ]; then
        [ "$name" != broker ] || die "the broker's own password: change it with reset (its storage keeps it)"
        file="$SECRETS/kafka-$name.password"
        tmp="$(mktemp -d)"
        new_secret "$tmp/kafka-$name.password"
        # every secured Kafka that runs learns it now; one stopped, at its next `up`
        for ids in $(running_kafka_identities); do
            IDS="$ids" env_of broker "$PY" -m pipeline.kafka.acls users "$tmp" >/dev/null \
                || { rm -rf "$tmp"; die "could not set the new SCRAM credential of $name (${ids#"$ROOT"/})"; }
        done
        mv "$tmp/kafka-$name.password" "$file"
        rm -rf "$tmp"
    elif [ -f "$SECRETS/ch-$name.password" ]; then
        file="$SECRETS/ch-$name.password"
        mv "$file" "$file.old"
        new_secret "$file"
        ch_write_config
        rm -f "$file.old"
        ch_await_password "$name"
    else
        die "no Kafka principal or ClickHouse user $name (see $SECRETS)"
    fi
    log "new password for $name in ${file#"$ROOT"/}; restart the components that use it"
}

ch_await_password() {  # user: until the server takes the user's new password (users.xml re-read)
    local user="$1" deadline=$((SECONDS + 30))
    until ch_healthy "$user"; do
        [ $SECONDS -lt $deadline ] || die "ClickHouse did not take the new password of $user within 30 s"
        sleep 0.5
    done
}

cmd_rotate_cert() {
    local flags
    "$HERE/tls.sh" rotate-server "$TLS"
    for flags in "--secure" "--cluster --secure"; do
        # shellcheck disable=SC2086  # two words
        kafka_running $flags || continue
        "$HERE/kafka.sh" down $flags
        "$HERE/kafka.sh" up $flags
    done
    ch_down
    ch_up
    log "servers restarted with the new certificate; clients trust the same CA"
}

kafka_running() {  # kafka.sh flags: whether a node of that secured Kafka runs
    local status
    status="$("$HERE/kafka.sh" status "$@" 2>/dev/null || true)"  # exit 3: a node stopped
    [[ "$status" == *": running "* ]]
}

running_kafka_identities() {  # the identity folders of the secured Kafkas that run
    kafka_running --secure && echo "$BASE/identities"
    kafka_running --cluster --secure && echo "$BASE/identities-cluster"
    return 0
}

# Everything docker-compose.secure.yml mounts, made once in .stack/compose/: the CA and the
# certificates (server names kafka, clickhouse), one secret per Kafka principal and
# ClickHouse user, ClickHouse's TLS and users configuration, the broker's health-check
# client settings. Secret files are 0644 in a 0700 folder: the containers run as nobody.
cmd_compose() {
    local out="$ROOT/.stack/compose" name
    mkdir -p "$out/secrets" "$out/clickhouse" "$out/kafka"
    chmod 700 "$out" "$out/secrets"
    TLS_SERVER_NAMES="DNS:kafka,DNS:clickhouse" "$HERE/tls.sh" ensure "$out/tls" admin publisher ingest worker sink rerate
    chmod 644 "$out/tls/server.key" "$out/tls/broker.keystore.pem" "$out"/tls/clients/*.key
    chmod 755 "$out/tls"
    SECRETS="$out/secrets" ensure_secrets
    chmod 644 "$out"/secrets/*
    SECRETS="$out/secrets" users_xml cdr >"$out/clickhouse/users.xml"
    cat >"$out/clickhouse/tls.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/secure.sh compose: TLS on the native port 9440. -->
<clickhouse>
    <tcp_port_secure>9440</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>/etc/clickhouse-server/tls/server.pem</certificateFile>
            <privateKeyFile>/etc/clickhouse-server/tls/server.key</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
        </server>
    </openSSL>
</clickhouse>
EOF
    cat >"$out/kafka/health.properties" <<EOF
security.protocol=SSL
ssl.keystore.type=PEM
ssl.keystore.location=/etc/kafka/tls/broker.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/tls/ca.pem
EOF
    log "compose files in ${out#"$ROOT"/}: docker compose -f docker-compose.yml -f docker-compose.secure.yml up -d"
}

ensure_secrets() {
    local name
    mkdir -p "$SECRETS"
    chmod 700 "$SECRETS"
    for name in "${KAFKA_PRINCIPALS[@]}"; do new_secret "$SECRETS/kafka-$name.password"; done
    for name in "${CH_USERS[@]}"; do new_secret "$SECRETS/ch-$name.password"; done
    new_secret "$SECRETS/dashboard.token"
}

# ---------------------------------------------------------------- identities
kafka_sasl() {  # principal
    cat <<EOF
CDR_KAFKA_BOOTSTRAP=$KAFKA_SASL_BOOTSTRAP
CDR_KAFKA_REPLICATION_FACTOR=$REPLICATION
CDR_KAFKA_SECURITY_PROTOCOL=SASL_SSL
CDR_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
CDR_KAFKA_USERNAME=$1
CDR_KAFKA_PASSWORD_FILE=$SECRETS/kafka-$1.password
CDR_KAFKA_CA_FILE=$TLS/ca.pem
EOF
}

kafka_mtls() {  # principal
    cat <<EOF
CDR_KAFKA_BOOTSTRAP=$KAFKA_MTLS_BOOTSTRAP
CDR_KAFKA_REPLICATION_FACTOR=$REPLICATION
CDR_KAFKA_SECURITY_PROTOCOL=SSL
CDR_KAFKA_CA_FILE=$TLS/ca.pem
CDR_KAFKA_CERT_FILE=$TLS/clients/$1.pem
CDR_KAFKA_KEY_FILE=$TLS/clients/$1.key
EOF
}

ch_url() {  # database: the TLS port's URL, with the TLS options (for --clickhouse too)
    echo "native://$HOST:$CH_PORT/$1?secure=1&ca_file=$TLS/ca.pem"
}

clickhouse_user() {  # user
    cat <<EOF
CDR_CLICKHOUSE_URL=$(ch_url cdr)
CDR_CLICKHOUSE_USER=$1
CDR_CLICKHOUSE_PASSWORD_FILE=$SECRETS/ch-$1.password
CDR_CLICKHOUSE_SECURE=true
CDR_CLICKHOUSE_CA_FILE=$TLS/ca.pem
EOF
}

write_identity() {  # name, then the lines
    local name="$1"
    shift
    {
        echo "# generated by deploy/local/secure.sh: the settings of component $name (no secret"
        echo "# in here, only the paths of the files that hold them)"
        "$@" | sed -E "s/^([A-Z_]+)=(.*)$/\\1='\\2'/"  # quoted: a URL holds '&'
    } >"$IDS/$name.env.tmp"
    mv "$IDS/$name.env.tmp" "$IDS/$name.env"
}

ensure_identities() {
    local p
    mkdir -p "$IDS"
    write_identity admin kafka_sasl admin
    write_identity broker kafka_sasl broker
    write_identity publisher kafka_sasl publisher
    write_identity ingest kafka_sasl ingest
    write_identity worker kafka_sasl worker
    write_identity sink eval 'kafka_sasl sink; clickhouse_user cdr_sink'
    write_identity rerate eval 'kafka_sasl rerate; clickhouse_user cdr_rerate'
    write_identity migrate clickhouse_user cdr_migrate
    write_identity report clickhouse_user cdr_report
    write_identity refresh clickhouse_user cdr_refresh
    write_identity dashboard eval "clickhouse_user cdr_dashboard; echo CDR_DASHBOARD_TOKEN_FILE=$SECRETS/dashboard.token"
    for p in admin publisher worker sink rerate; do write_identity "$p-mtls" kafka_mtls "$p"; done
}

# ---------------------------------------------------------------- Kafka
kafka_acls_and_topics() {
    # The ACLs of the default deployment (no topic prefix, worker app id cdr-correlator,
    # sink group cdr-sink), as the broker's super user; the pipeline's topics as admin
    # (replicated as the identities say: 3 on the cluster). The table is the same for the
    # single node and the cluster: pipeline.kafka.acls.pipeline_grants.
    log "Kafka ACLs for the default topics, worker cdr-correlator, sink cdr-sink"
    # the principals' SCRAM credentials, also of principals added since the format
    env_of broker "$PY" -m pipeline.kafka.acls users "$SECRETS" >/dev/null
    env_of broker "$PY" -m pipeline.kafka.acls apply >/dev/null
    env_of admin "$PY" - "$PARTITIONS" <<'PY'
import sys
from pipeline.kafka.admin import default_topic_specs, ensure_topics
from pipeline.runtime.settings import load_settings

kafka = load_settings(env=None).kafka
created = ensure_topics(kafka, default_topic_specs("", int(sys.argv[1]),
                                                  kafka.replication_factor))
print("secure.sh: topics created: " + (", ".join(created) or "none (all there)"), file=sys.stderr)
PY
}

# run a command with the identity NAME's settings in its environment
env_of() {
    local name="$1"
    shift
    (set -a; . "$IDS/$name.env"; set +a; exec "$@")
}

# ---------------------------------------------------------------- ClickHouse
ch_bin() {
    local c
    for c in "$(command -v clickhouse-server 2>/dev/null || true)" /usr/sbin/clickhouse-server /usr/bin/clickhouse-server; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

sha256_of() { printf '%s' "$(cat "$1")" | sha256sum | cut -d' ' -f1; }

ch_user_xml() {  # user profile databases...
    local user="$1" profile="$2" db
    shift 2
    cat <<EOF
        <$user>
            <password_sha256_hex>$(sha256_of "$SECRETS/ch-$user.password")</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>$profile</profile>
            <quota>$([ "$profile" = reader ] && echo reader || echo default)</quota>
            <allow_databases>
EOF
    for db in "$@"; do echo "                <database>$db</database>"; done
    cat <<EOF
            </allow_databases>
        </$user>
EOF
}

ch_write_config() {
    local conf="$CH/etc" db dbs=()
    # shellcheck disable=SC2206
    dbs=($DATABASES)
    for db in "${dbs[@]}"; do
        [[ "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "CDR_SECURE_DATABASES: $db is not a database name"
    done
    ch_config_xml "$CH" "    <listen_host>$HOST</listen_host>
    <!-- TLS only: no tcp_port, no http_port, no interserver port -->
    <tcp_port_secure>$CH_PORT</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>$TLS/server.pem</certificateFile>
            <privateKeyFile>$TLS/server.key</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>" "$MAX_MEMORY" secure.sh "$conf/config.xml.tmp"
    mv "$conf/config.xml.tmp" "$conf/config.xml"
    (umask 077 && users_xml "${dbs[@]}" >"$conf/users.xml.tmp")
    mv "$conf/users.xml.tmp" "$conf/users.xml"
}

# Least privilege as far as 18.16 goes (no SQL grants there, docs/security.md): who may
# write (readonly), who may change the schema (allow_ddl), which databases, how much
# memory and time a query may take (the readers' quota bounds what their client settings
# could lift). There is no `default` user: each component logs in as its own user.
users_xml() {  # databases...: users.xml, the passwords' hashes from $SECRETS
    local dbs=("$@")
    cat <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/secure.sh; edits are overwritten on 'up'. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>$MAX_MEMORY</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
        </default>
        <ddl>
            <max_memory_usage>$MAX_MEMORY</max_memory_usage>
            <readonly>0</readonly>
            <allow_ddl>1</allow_ddl>
        </ddl>
        <writer>
            <max_memory_usage>$MAX_MEMORY</max_memory_usage>
            <readonly>0</readonly>
            <allow_ddl>0</allow_ddl>
        </writer>
        <reader>
            <max_memory_usage>1073741824</max_memory_usage>
            <max_execution_time>30</max_execution_time>
            <max_result_rows>1000000</max_result_rows>
            <readonly>2</readonly>
            <allow_ddl>0</allow_ddl>
        </reader>
    </profiles>
    <users>
EOF
    ch_user_xml cdr_migrate ddl default "${dbs[@]}"
    ch_user_xml cdr_sink writer default "${dbs[@]}"
    ch_user_xml cdr_rerate writer default "${dbs[@]}"
    ch_user_xml cdr_refresh ddl default "${dbs[@]}"  # staging tables, REPLACE PARTITION
    ch_user_xml cdr_dashboard reader default "${dbs[@]}"
    ch_user_xml cdr_report reader default "${dbs[@]}"
    cat <<EOF
    </users>
    <quotas>
        <!-- the readers' query time per hour: a bound their client settings cannot lift -->
$(ch_quota_xml reader 1800)
$(ch_quota_xml default 0)
    </quotas>
</yandex>
EOF
}

ch_pid() {
    local pid
    [ -f "$CH/server.pid" ] || return 1
    pid="$(cat "$CH/server.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--config-file=$CH/etc/config.xml" || return 1
    echo "$pid"
}

ch_healthy() {  # [user]: SELECT 1 over TLS as the migrate user (or USER), the CA checked
    local user="${1:-cdr_migrate}"
    env_of migrate env CDR_CLICKHOUSE_USER="$user" CDR_CLICKHOUSE_PASSWORD_FILE="$SECRETS/ch-$user.password" \
        "$PY" - <<'PY' 2>/dev/null
import sys
from pipeline.runtime.settings import load_settings
from pipeline.storage.url import open_clickhouse

backend, _ = open_clickhouse(load_settings(env=None).clickhouse)
try:
    sys.exit(0 if backend.execute("SELECT 1") == [(1,)] else 1)
finally:
    backend.close()
PY
}

ch_up() {
    local bin pid deadline
    if pid="$(ch_pid)"; then
        ch_write_config  # users.xml is re-read by the running server within seconds
        log "ClickHouse already running (pid $pid), native TLS $HOST:$CH_PORT"
        return 0
    fi
    bin="$(ch_bin)" || { "$HERE/clickhouse.sh" install; bin="$(ch_bin)"; } || die "clickhouse-server not found"
    (exec 3<>"/dev/tcp/$HOST/$CH_PORT") 2>/dev/null && die "port $HOST:$CH_PORT is in use by another process"
    ch_write_config
    setsid "$bin" --config-file="$CH/etc/config.xml" >>"$CH/log/stdout.log" 2>&1 </dev/null 9>&- &
    echo "$!" >"$CH/server.pid"
    deadline=$((SECONDS + CH_START_TIMEOUT))
    until ch_healthy; do
        ch_pid >/dev/null || die "clickhouse-server exited during start-up; see $CH/log/"
        [ $SECONDS -lt $deadline ] || die "ClickHouse not healthy after ${CH_START_TIMEOUT}s; see $CH/log/"
        sleep 0.3
    done
    log "ClickHouse up: native TLS $HOST:$CH_PORT, users ${CH_USERS[*]}"
}

ch_down() {
    local pid deadline
    if ! pid="$(ch_pid)"; then
        rm -f "$CH/server.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + CH_STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
        sleep 0.2
    done
    rm -f "$CH/server.pid"
    log "ClickHouse stopped"
}

migrate_schema() {
    local db
    for db in $DATABASES; do
        env_of migrate "$ROOT/.venv/bin/cdr-pipeline" db migrate --clickhouse "$(ch_url "$db")" >/dev/null
    done
    log "schema current in: $DATABASES"
}

# ---------------------------------------------------------------- commands
cmd_up() {
    "$HERE/bootstrap.sh"
    mkdir -p "$BASE"
    chmod 700 "$BASE"
    "$HERE/tls.sh" ensure "$TLS" admin publisher worker sink rerate
    ensure_secrets
    ensure_identities
    "$HERE/kafka.sh" up "${KAFKA_FLAGS[@]}"
    kafka_acls_and_topics
    ch_up
    migrate_schema
    log "secured stack up: Kafka SASL_SSL $KAFKA_SASL_BOOTSTRAP, mTLS $KAFKA_MTLS_BOOTSTRAP; ClickHouse TLS $HOST:$CH_PORT; identities in ${IDS#"$ROOT"/}/"
}

cmd_status() {
    local rc=0 pid
    "$HERE/kafka.sh" status "${KAFKA_FLAGS[@]}" || rc=$?
    if pid="$(ch_pid)"; then
        echo "clickhouse (secure): running pid $pid, native TLS $HOST:$CH_PORT"
    else
        echo "clickhouse (secure): stopped"
        rc=3
    fi
    return $rc
}

cmd_down() {  # this mode's Kafka; ClickHouse too unless the other secured Kafka runs
    local rc=0
    "$HERE/kafka.sh" down "${KAFKA_FLAGS[@]}" || rc=$?
    if kafka_running "${OTHER_FLAGS[@]}"; then
        log "ClickHouse left running: the other secured Kafka (kafka.sh ${OTHER_FLAGS[*]}) runs"
    else
        ch_down || rc=$?
    fi
    return $rc
}

cmd_reset() {
    if [ "$CLUSTER" = 1 ]; then  # the cluster's own state; CA, secrets, ClickHouse stay
        cmd_down
        rm -rf -- "$BASE/kafka-cluster" "$IDS"
        log "removed ${BASE#"$ROOT"/}/kafka-cluster and ${IDS#"$ROOT"/}"
    else  # everything under .stack/secure/, the cluster's state included
        "$HERE/kafka.sh" down --cluster --secure
        cmd_down
        rm -rf -- "$BASE"
        log "removed ${BASE#"$ROOT"/}"
    fi
}

mkdir -p "$ROOT/.stack"
exec 9>"$ROOT/.stack/secure.lock"
flock -w 600 9 || die "another secure.sh holds .stack/secure.lock"

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    rotate-password)
        [ $# -eq 2 ] || usage
        cmd_rotate_password "$2" ;;
    rotate-cert) cmd_rotate_cert ;;
    compose) cmd_compose ;;
    env)
        [ $# -eq 2 ] || usage
        [ -f "$IDS/$2.env" ] || die "no identity $2 (run secure.sh up${KAFKA_FLAGS[1]:+ --cluster}; names: $(ls "$IDS" 2>/dev/null | sed 's/\.env$//' | tr '\n' ' '))"
        echo "$IDS/$2.env" ;;
    *) usage ;;
esac
