#!/usr/bin/env bash
# Local Apache Kafka (KRaft) without Docker: jars from Maven Central, one JVM per node.
#
#   deploy/local/kafka.sh up|down|status|reset [--cluster] [--secure]
#   deploy/local/kafka.sh stop-node N --cluster [--secure] | start-node N --cluster [--secure]
#   deploy/local/kafka.sh fetch          # only fetch the jars
#   deploy/local/kafka.sh bootstrap|mtls-bootstrap [--cluster] [--secure]   its addresses
#
# single (default): one combined broker+controller node
#     bootstrap 127.0.0.1:19092, controller 127.0.0.1:19093, state in .stack/kafka/single/
# --cluster:        three combined broker+controller nodes, quorum of three, topics RF 3,
#     min.insync.replicas 2; bootstrap 127.0.0.1:29092,127.0.0.1:29192,127.0.0.1:29292,
#     controllers 127.0.0.1:29093,29193,29293; state in .stack/kafka/cluster/nodeN/
# --secure:         one node, SASL_SSL (SCRAM-SHA-512) on 127.0.0.1:39092, mTLS on 39094,
#     controller 39093 (mTLS), StandardAuthorizer; state in .stack/secure/kafka/. Needs the
#     certificates and passwords deploy/local/secure.sh makes (use secure.sh up).
# --cluster --secure: the three-node cluster secured like --secure: SASL_SSL on
#     127.0.0.1:49092,49192,49292, mTLS 49094,49194,49294, controllers (mTLS)
#     49093,49193,49293; state in .stack/secure/kafka-cluster/nodeN/ (secure.sh up --cluster)
#
# Environment (all optional):
#   KAFKA_HEAP_OPTS       JVM heap per node            (default: -Xms128m -Xmx512m)
#   KAFKA_JVM_OPTS        extra JVM options per node
#   KAFKA_START_TIMEOUT   seconds to wait for health   (default: 180)
#   KAFKA_STOP_TIMEOUT    seconds between SIGTERM and SIGKILL (default: 60)
#   KAFKA_PYTHON          python with confluent_kafka for the health check
#                         (default: <repo>/.venv/bin/python; without it: port + log check)
#   MVN                   maven command and options    (default: mvn)
#
# Exit codes: 0 ok; 1 failure (message on stderr); 2 usage; status: 3 if a node is stopped.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd -P)"
POM="$SCRIPT_DIR/kafka/pom.xml"
STACK="$ROOT/.stack/kafka"
LIBS="$STACK/libs"

HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
JVM_OPTS="${KAFKA_JVM_OPTS:-}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-180}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-60}"
PYTHON="${KAFKA_PYTHON:-$ROOT/.venv/bin/python}"
MVN="${MVN:-mvn}"
HOST=127.0.0.1

log() { printf 'kafka.sh: %s\n' "$*"; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=deploy/local/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------- arguments
CLUSTER=0
SECURE=0
ARGS=()
for a in "$@"; do
    case "$a" in
        --cluster) CLUSTER=1 ;;
        --secure) SECURE=1 ;;
        -h|--help) usage ;;
        *) ARGS+=("$a") ;;
    esac
done
[ "${#ARGS[@]}" -ge 1 ] || usage
CMD="${ARGS[0]}"

# A stack is its mode: where its state lives and the first node's broker port; node N's
# ports are 100 * (N - 1) above node 1's, its controller port the broker's + 1 and (secured)
# its mTLS port the broker's + 2.
SECURE_DIR="$ROOT/.stack/secure"
case "$SECURE$CLUSTER" in
    00) MODE=single; MODE_DIR="$STACK/single"; PORT_BASE=19092 ;;
    01) MODE=cluster; MODE_DIR="$STACK/cluster"; PORT_BASE=29092 ;;
    10) MODE=secure; MODE_DIR="$SECURE_DIR/kafka"; PORT_BASE=39092 ;;
    11) MODE=secure-cluster; MODE_DIR="$SECURE_DIR/kafka-cluster"; PORT_BASE=49092 ;;
esac
if [ "$CLUSTER" = 1 ]; then NODES=(1 2 3); else NODES=(1); fi

# ---------------------------------------------------------------- per-node layout
node_dir() { if [ "$CLUSTER" = 1 ]; then echo "$MODE_DIR/node$1"; else echo "$MODE_DIR"; fi; }
broker_port() { echo $((PORT_BASE + 100 * ($1 - 1))); }
controller_port() { echo $(($(broker_port "$1") + 1)); }
mtls_port() { echo $(($(broker_port "$1") + 2)); }
pid_file() { echo "$(node_dir "$1")/kafka.pid"; }

voters() {
    local n out=""
    for n in "${NODES[@]}"; do out="${out:+$out,}$n@$HOST:$(controller_port "$n")"; done
    echo "$out"
}

bootstrap() {  # [port function]: the nodes' broker ports (or mtls_port's)
    local n out="" port="${1:-broker_port}"
    for n in "${NODES[@]}"; do out="${out:+$out,}$HOST:$("$port" "$n")"; done
    echo "$out"
}

# pid of the node's JVM if it is running (checks the command line, not only the pid)
node_pid() {
    local f pid
    f="$(pid_file "$1")"
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$(node_dir "$1")/server.properties" || return 1
    echo "$pid"
}

# ---------------------------------------------------------------- jars
# The JDK and Maven from Debian's packages when missing, then the jars (lib.sh).
fetch_jars() {
    ensure_java_maven
    command -v java >/dev/null || die "java not found (Kafka 4.x needs Java 17+)"
    maven_fetch "$POM" "$LIBS" "kafka_2.13-*.jar" Kafka
}

# ---------------------------------------------------------------- secure mode
# A secured node's listeners, TLS files and authorizer (docs/security.md), the same for
# the single node and each of the cluster's three. Clients authenticate with SCRAM-SHA-512
# over TLS (SASL_SSL) or with a client certificate (MTLS listener); the CN of a certificate
# is the principal, so CN=broker (the server certificate) is User:broker, the one super
# user, which the brokers themselves are on the controller listeners (the quorum, mTLS)
# and between brokers (replication, SASL_SSL as SCRAM user broker).
secret_file() { echo "$SECURE_DIR/secrets/kafka-$1.password"; }

secure_listeners() {
    local n="$1" tls="$SECURE_DIR/tls" pw f
    for f in "$tls/ca.pem" "$tls/broker.keystore.pem" "$(secret_file broker)"; do
        [ -s "$f" ] || die "$f missing: start the secured stack with deploy/local/secure.sh up"
    done
    pw="$(cat "$(secret_file broker)")"
    cat <<EOF
listeners=SASL_SSL://$HOST:$(broker_port "$n"),CONTROLLER://$HOST:$(controller_port "$n"),MTLS://$HOST:$(mtls_port "$n")
advertised.listeners=SASL_SSL://$HOST:$(broker_port "$n"),MTLS://$HOST:$(mtls_port "$n")
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL,MTLS:SSL
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="$pw";
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
ssl.enabled.protocols=TLSv1.3,TLSv1.2
listener.name.controller.ssl.client.auth=required
listener.name.mtls.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([A-Za-z0-9._-]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:broker
allow.everyone.if.no.acl.found=false
EOF
}

plain_listeners() {
    local n="$1"
    cat <<EOF
listeners=PLAINTEXT://$HOST:$(broker_port "$n"),CONTROLLER://$HOST:$(controller_port "$n")
advertised.listeners=PLAINTEXT://$HOST:$(broker_port "$n")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
EOF
}

# ---------------------------------------------------------------- config
write_config() {
    local n="$1" dir rf minisr listeners
    dir="$(node_dir "$n")"
    mkdir -p "$dir/data" "$dir/logs"
    if [ "$CLUSTER" = 1 ]; then rf=3; minisr=2; else rf=1; minisr=1; fi
    if [ "$SECURE" = 1 ]; then listeners="$(secure_listeners "$n")"; else listeners="$(plain_listeners "$n")"; fi
    (umask 077 && : >"$dir/server.properties.tmp")  # the secure node's holds its password
    cat >"$dir/server.properties.tmp" <<EOF
# generated by deploy/local/kafka.sh ($MODE node $n); edits are overwritten on every start
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
$listeners
log.dirs=$dir/data

# topics are created on purpose (pipeline.kafka.admin.ensure_topics), never by accident
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$minisr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$minisr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$minisr
group.initial.rebalance.delay.ms=0

# a 2-core machine
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
EOF
    mv "$dir/server.properties.tmp" "$dir/server.properties"

    cat >"$dir/log4j2.properties" <<'EOF'
# generated by deploy/local/kafka.sh
name = kafka-local
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 5
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
appender.out.filter.threshold.type = ThresholdFilter
appender.out.filter.threshold.level = error
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
EOF
}

cluster_id() {
    local f="$MODE_DIR/cluster.id" id
    if [ ! -s "$f" ]; then
        mkdir -p "$MODE_DIR"
        # a Kafka Uuid: 16 random bytes, base64url without padding; Kafka avoids a leading '-'
        while :; do
            id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
            [ "${id:0:1}" != "-" ] && break
        done
        echo "$id" >"$f"
    fi
    cat "$f"
}

format_node() {
    local n="$1" dir cid
    dir="$(node_dir "$n")"
    [ -f "$dir/data/meta.properties" ] && return 0
    cid="$(cluster_id)"
    log "formatting $MODE node $n storage (cluster id $cid)"
    # The whole command line in a java argument file (mode 0600, deleted after): in secure
    # mode it holds the SCRAM users' passwords (--add-scram), which must not show in ps.
    local argfile="$dir/format.args" f name
    (umask 077 && : >"$argfile")
    {
        # a short-lived JVM: C1 only and the serial GC halve its run time
        printf '%s\n' -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "\"$LIBS/*\"" \
            "\"-Dlog4j2.configurationFile=$dir/log4j2.properties\"" "\"-Dkafka.logs.dir=$dir/logs\"" \
            kafka.tools.StorageTool format -t "$cid" -c "\"$dir/server.properties\"" --ignore-formatted
        if [ "$SECURE" = 1 ]; then
            for f in "$SECURE_DIR"/secrets/kafka-*.password; do
                name="$(basename "$f" .password)"
                name="${name#kafka-}"
                printf -- '--add-scram\n"SCRAM-SHA-512=[name=%s,password=%s]"\n' "$name" "$(cat "$f")"
            done
        fi
    } >>"$argfile"
    if ! java "@$argfile" >"$dir/logs/format.log" 2>&1 9>&-; then
        rm -f "$argfile"
        die "formatting $dir/data failed, see $dir/logs/format.log"
    fi
    rm -f "$argfile"
}

# ---------------------------------------------------------------- start / stop
# write the configs and format the storage of nodes, the formatting JVMs in parallel
prepare_nodes() {
    local n jobs=() j rc=0
    for n in "$@"; do write_config "$n"; done
    cluster_id >/dev/null
    for n in "$@"; do
        format_node "$n" &
        jobs+=("$!")
    done
    for j in "${jobs[@]}"; do wait "$j" || rc=1; done
    [ "$rc" = 0 ] || exit 1
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

start_jvm() {
    local n="$1" dir port
    dir="$(node_dir "$n")"
    local ports=("$(broker_port "$n")" "$(controller_port "$n")")
    [ "$SECURE" = 1 ] && ports+=("$(mtls_port "$n")")
    for port in "${ports[@]}"; do
        port_in_use "$port" && die "$MODE node $n: port $HOST:$port is already in use by another process"
    done
    : >"$dir/logs/kafka.out"
    # setsid: own session, so a Ctrl-C in the terminal (or a test runner) that ran us does not
    # reach the broker; the subshell writes its own pid and then becomes the JVM (exec).
    # shellcheck disable=SC2086
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$(pid_file "$n")" \
        java $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
        $JVM_OPTS -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
        </dev/null >>"$dir/logs/kafka.out" 2>&1 9>&- &
    local deadline=$((SECONDS + 10))
    until node_pid "$n" >/dev/null; do
        [ $SECONDS -lt $deadline ] || die "$MODE node $n did not start, see $dir/logs/kafka.out"
        sleep 0.1
    done
}

health_py() {
    # args: bootstrap expected_ids(csv) pids(csv) timeout; exit 0 healthy, 2 a JVM died, 1 timeout
    "$PYTHON" - "$@" <<'PY'
import os, socket, sys, time
from confluent_kafka.admin import AdminClient

bootstrap, ids, pids, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
want = {int(i) for i in ids.split(",")}
pids = [int(p) for p in pids.split(",") if p]
addrs = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in bootstrap.split(","))]
deadline = time.monotonic() + timeout
admin = None
last = "no broker port accepts connections yet"

def alive() -> bool:
    for p in pids:
        try:
            os.kill(p, 0)
        except ProcessLookupError:
            print(f"JVM pid {p} exited", file=sys.stderr)
            return False
    return True

while time.monotonic() < deadline:
    if not alive():
        sys.exit(2)
    if admin is None:
        for a in addrs:
            try:
                socket.create_connection(a, timeout=1).close()
            except OSError:
                continue
            conf = {"bootstrap.servers": bootstrap, "log_level": 0,
                    "reconnect.backoff.max.ms": 500}
            if os.environ.get("KAFKA_HEALTH_USER"):  # the secured node: as its super user
                with open(os.environ["KAFKA_HEALTH_PASSWORD_FILE"], encoding="utf-8") as f:
                    password = f.read().strip()
                conf.update({"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
                             "sasl.username": os.environ["KAFKA_HEALTH_USER"],
                             "sasl.password": password,
                             "ssl.ca.location": os.environ["KAFKA_HEALTH_CA"]})
            admin = AdminClient(conf)
            break
    if admin is not None:
        try:
            md = admin.list_topics(timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            seen = set(md.brokers)
            if want <= seen:
                sys.exit(0)
            last = f"brokers in metadata {sorted(seen)}, waiting for {sorted(want)}"
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = str(e)
    time.sleep(0.25)
print(last, file=sys.stderr)
sys.exit(1)
PY
}

health_fallback() {
    # no python with confluent_kafka: the broker port accepts and the log says the server started
    local ids="$1" pids="$2" timeout="$3" deadline n p ok
    deadline=$((SECONDS + ${timeout%.*}))
    while [ $SECONDS -lt "$deadline" ]; do
        for p in ${pids//,/ }; do kill -0 "$p" 2>/dev/null || return 2; done
        ok=1
        for n in ${ids//,/ }; do
            if ! port_in_use "$(broker_port "$n")" \
                || ! grep -q "Kafka Server started" "$(node_dir "$n")/logs/server.log" 2>/dev/null; then
                ok=0
            fi
        done
        [ "$ok" = 1 ] && return 0
        sleep 0.25
    done
    return 1
}

# wait until every node in $1 (csv ids) is registered and unfenced in the cluster metadata
wait_healthy() {
    local ids="$1" pids="" n p rc=0 bs logs=""
    for n in ${ids//,/ }; do
        p="$(node_pid "$n" || true)"
        pids="${pids:+$pids,}$p"
        logs="$logs $(node_dir "$n")/logs/server.log"
    done
    bs="$(bootstrap)"
    if [ "$SECURE" = 1 ]; then
        KAFKA_HEALTH_USER=broker KAFKA_HEALTH_PASSWORD_FILE="$(secret_file broker)" \
            KAFKA_HEALTH_CA="$SECURE_DIR/tls/ca.pem" \
            health_py "$bs" "$ids" "$pids" "$START_TIMEOUT" || rc=$?
    elif [ -x "$PYTHON" ] && "$PYTHON" -c 'import confluent_kafka' 2>/dev/null; then
        health_py "$bs" "$ids" "$pids" "$START_TIMEOUT" || rc=$?
    else
        health_fallback "$ids" "$pids" "$START_TIMEOUT" || rc=$?
    fi
    case "$rc" in
        0) return 0 ;;
        2) die "a $MODE node exited during start-up, see$logs (and kafka.out next to them)" ;;
        *) die "$MODE node(s) $ids not healthy after ${START_TIMEOUT}s, see$logs" ;;
    esac
}

stop_nodes() {
    # SIGTERM every node at once (a combined node waits for the quorum when it shuts down,
    # so stopping them one after the other is slower), then SIGKILL what is left after the timeout
    local n pid pids=() deadline
    for n in "$@"; do
        if pid="$(node_pid "$n")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$n:$pid")
        else
            rm -f "$(pid_file "$n")"
        fi
    done
    [ "${#pids[@]}" -gt 0 ] || { log "$MODE: nothing running"; return 0; }
    deadline=$((SECONDS + STOP_TIMEOUT))
    local np left
    while :; do
        left=()
        for np in "${pids[@]}"; do kill -0 "${np#*:}" 2>/dev/null && left+=("$np"); done
        [ "${#left[@]}" -gt 0 ] || break
        if [ $SECONDS -ge $deadline ]; then
            for np in "${left[@]}"; do
                log "$MODE node ${np%%:*} still running after ${STOP_TIMEOUT}s, SIGKILL"
                kill -KILL "${np#*:}" 2>/dev/null || true
            done
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    for np in "${pids[@]}"; do
        rm -f "$(pid_file "${np%%:*}")"
        log "$MODE node ${np%%:*} stopped"
    done
}

# ---------------------------------------------------------------- commands
cmd_up() {
    local n started=() t0=$SECONDS
    fetch_jars
    for n in "${NODES[@]}"; do
        node_pid "$n" >/dev/null || started+=("$n")
    done
    if [ "${#started[@]}" -eq 0 ]; then
        log "$MODE already running, bootstrap $(bootstrap)"
        return 0
    fi
    prepare_nodes "${started[@]}"
    for n in "${started[@]}"; do start_jvm "$n"; done
    local ids
    ids="$(IFS=,; echo "${NODES[*]}")"
    wait_healthy "$ids"
    log "$MODE up in $((SECONDS - t0))s, bootstrap $(bootstrap)"
}

cmd_status() {
    local n pid state rc=0 mtls
    for n in "${NODES[@]}"; do
        if pid="$(node_pid "$n")"; then state="running  pid $pid"; else state=stopped; rc=3; fi
        mtls=""
        [ "$SECURE" = 1 ] && mtls="  mTLS $HOST:$(mtls_port "$n")"
        printf '%s node %s: %s  broker %s:%s  controller %s:%s%s\n' "$MODE" "$n" "$state" \
            "$HOST" "$(broker_port "$n")" "$HOST" "$(controller_port "$n")" "$mtls"
    done
    echo "bootstrap: $(bootstrap)   state: ${MODE_DIR#"$ROOT"/}"
    return $rc
}

cmd_reset() {
    stop_nodes "${NODES[@]}"
    rm -rf "$MODE_DIR"
    log "$MODE data, logs and cluster id deleted (${MODE_DIR#"$ROOT"/}); jars kept"
}

node_arg() {
    [ "$CLUSTER" = 1 ] || die "$CMD needs --cluster"
    [ "${#ARGS[@]}" -eq 2 ] && [[ "${ARGS[1]}" =~ ^[123]$ ]] || die "usage: kafka.sh $CMD 1|2|3 --cluster [--secure]"
    echo "${ARGS[1]}"
}

# the addresses need no lock: deploy/local/secure.sh writes its identities from them
case "$CMD" in
    bootstrap) bootstrap; exit 0 ;;
    mtls-bootstrap)
        [ "$SECURE" = 1 ] || die "mtls-bootstrap needs --secure"
        bootstrap mtls_port; exit 0 ;;
esac

# one operation at a time per stack (parallel test runners, two terminals)
mkdir -p "$STACK"
exec 9>"$STACK/.lock"
flock 9

case "$CMD" in
    up) cmd_up ;;
    down) stop_nodes "${NODES[@]}" ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    fetch) fetch_jars; log "jars in ${LIBS#"$ROOT"/}" ;;
    stop-node)
        n="$(node_arg)"
        stop_nodes "$n" ;;
    start-node)
        n="$(node_arg)"
        fetch_jars
        if node_pid "$n" >/dev/null; then
            log "$MODE node $n already running"
        else
            t0=$SECONDS
            prepare_nodes "$n"
            start_jvm "$n"
            wait_healthy "$n"
            log "$MODE node $n up in $((SECONDS - t0))s, broker $HOST:$(broker_port "$n")"
        fi ;;
    *) usage ;;
esac
