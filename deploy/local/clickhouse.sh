#!/usr/bin/env bash
# Local ClickHouse server for development and integration tests.
#
#   deploy/local/clickhouse.sh install   apt-get install clickhouse-server/-client (idempotent)
#   deploy/local/clickhouse.sh up        install if missing, start, wait until healthy
#   deploy/local/clickhouse.sh down      graceful stop (SIGTERM, wait, then SIGKILL)
#   deploy/local/clickhouse.sh status    print whether it runs and answers
#   deploy/local/clickhouse.sh reset     down, then delete data, logs and config
#
#   deploy/local/clickhouse.sh up|down|status|reset --cluster
#   deploy/local/clickhouse.sh stop-node N|start-node N|kill-node N --cluster   (N = 1..4)
#
# --cluster: 2 shards x 2 replicas (replicated tables, ON CLUSTER DDL) coordinated by
# ZooKeeper (deploy/local/zookeeper.sh, 127.0.0.1:12181, started and stopped with it).
# Node N listens on native 1910N-1, HTTP 1820N-1, interserver 1930N-1 (N=1: 19100,
# 18200, 19300); nodes 1,2 are shard 1, nodes 3,4 shard 2; cluster name `cdr_cluster`,
# macros {shard} (1|2) and {replica} (node1..node4). State: .stack/clickhouse-cluster/nodeN/.
# `kill-node` is SIGKILL (a crash); `stop-node` a graceful stop; `reset --cluster` also
# deletes ZooKeeper's data (the replicated tables' metadata lives there).
#
# The server is the Debian package's binary (18.16 on bookworm), started
# directly -- never through systemd or `service` -- with a project-local
# configuration under <repo>/.stack/clickhouse/ (git-ignored). It listens on
# 127.0.0.1 only: native TCP 19000, HTTP 18123; no interserver port.
#
# Environment overrides (all optional):
#   CDR_CH_TCP_PORT (19000)  CDR_CH_HTTP_PORT (18123)
#   CDR_CH_START_TIMEOUT_S (60)  CDR_CH_STOP_TIMEOUT_S (30)
#   CDR_CH_MAX_MEMORY_BYTES (2147483648: per-query limit, and the server-wide
#   limit on servers that know max_server_memory_usage)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/../.." && pwd -P)"
# The paths of the server whose state lives under $BASE (one server, or a cluster node).
set_paths() {
    CONF_DIR="${BASE}/etc"
    DATA_DIR="${BASE}/data"
    TMP_DIR="${BASE}/tmp"
    USER_FILES_DIR="${BASE}/user_files"
    FORMAT_SCHEMA_DIR="${BASE}/format_schemas"
    LOG_DIR="${BASE}/log"
    PID_FILE="${BASE}/clickhouse-server.pid"
    STDOUT_LOG="${LOG_DIR}/stdout.log"
    SERVER_LOG="${LOG_DIR}/clickhouse-server.log"
    ERROR_LOG="${LOG_DIR}/clickhouse-server.err.log"
}
BASE="${REPO_ROOT}/.stack/clickhouse"
set_paths
LOCK_FILE="${REPO_ROOT}/.stack/clickhouse.lock"
INTERSERVER_PORT=""
CLUSTER_XML="    <!-- no interserver_http_port: single node, no replication -->"
PROFILE_XML=""

TCP_PORT="${CDR_CH_TCP_PORT:-19000}"
HTTP_PORT="${CDR_CH_HTTP_PORT:-18123}"
HOST="127.0.0.1"
START_TIMEOUT_S="${CDR_CH_START_TIMEOUT_S:-60}"
STOP_TIMEOUT_S="${CDR_CH_STOP_TIMEOUT_S:-30}"
MAX_MEMORY_BYTES="${CDR_CH_MAX_MEMORY_BYTES:-2147483648}"

for _p in "${TCP_PORT}" "${HTTP_PORT}"; do
    if ! [[ "${_p}" =~ ^[0-9]+$ ]] || ((_p < 1 || _p > 65535)); then
        printf '[clickhouse.sh] ERROR: invalid port %s (CDR_CH_TCP_PORT / CDR_CH_HTTP_PORT)\n' "${_p}" >&2
        exit 2
    fi
done
if ! [[ "${MAX_MEMORY_BYTES}" =~ ^[0-9]+$ ]]; then
    printf '[clickhouse.sh] ERROR: CDR_CH_MAX_MEMORY_BYTES must be a number of bytes\n' >&2
    exit 2
fi

log() { printf '[clickhouse.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

server_bin() {
    # Debian ships /usr/sbin/clickhouse-server (not on every user's PATH).
    local c
    for c in "$(command -v clickhouse-server 2>/dev/null || true)" /usr/sbin/clickhouse-server \
        /usr/bin/clickhouse-server; do
        if [[ -n "${c}" && -x "${c}" ]]; then
            echo "${c}"
            return 0
        fi
    done
}

installed() {
    [[ -n "$(server_bin)" ]] && command -v clickhouse-client >/dev/null 2>&1
}

cmd_install() {
    if installed; then
        log "clickhouse-server and clickhouse-client already installed: $(server_version_string)"
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "install needs root (apt-get); run as root or install clickhouse-server clickhouse-client yourself"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get update -q >/dev/null
    log "apt-get install -y clickhouse-server clickhouse-client"
    # The package's postinst may try to start the service through invoke-rc.d;
    # containers usually deny that (policy-rc.d exit 101). Either way this
    # script never uses the system service: `up` runs its own instance.
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        clickhouse-server clickhouse-client >/dev/null
    installed || die "apt-get finished but clickhouse-server/clickhouse-client are not on PATH"
    log "installed: $(server_version_string)"
}

server_version_string() {
    local v
    v="$(clickhouse-client --version 2>/dev/null | head -n1 | sed -E 's/.*version ([0-9.]*[0-9]).*/\1/')"
    echo "ClickHouse ${v:-(unknown version)}"
}

# --- configuration -----------------------------------------------------------

write_config() {
    mkdir -p "${CONF_DIR}" "${DATA_DIR}" "${TMP_DIR}" "${USER_FILES_DIR}" \
        "${FORMAT_SCHEMA_DIR}" "${LOG_DIR}"
    # Rewritten on every `up` so edits to this script take effect; the data
    # directory is left alone.
    cat >"${CONF_DIR}/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/clickhouse.sh; edits are overwritten on 'up'. -->
<yandex>
    <logger>
        <level>information</level>
        <log>${SERVER_LOG}</log>
        <errorlog>${ERROR_LOG}</errorlog>
        <size>100M</size>
        <count>3</count>
        <console>0</console>
    </logger>

    <listen_host>${HOST}</listen_host>
    <tcp_port>${TCP_PORT}</tcp_port>
    <http_port>${HTTP_PORT}</http_port>
${CLUSTER_XML}

    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>50</max_concurrent_queries>

    <!-- modest caches: this is a laptop/CI server -->
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <!-- server-wide cap; ignored by servers that do not know it (18.16) -->
    <max_server_memory_usage>${MAX_MEMORY_BYTES}</max_server_memory_usage>

    <path>${DATA_DIR}/</path>
    <tmp_path>${TMP_DIR}/</tmp_path>
    <user_files_path>${USER_FILES_DIR}/</user_files_path>
    <format_schema_path>${FORMAT_SCHEMA_DIR}/</format_schema_path>

    <users_config>${CONF_DIR}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>

    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>

    <query_log>
        <database>system</database>
        <table>query_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds>
    </query_log>
</yandex>
EOF
    cat >"${CONF_DIR}/users.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/clickhouse.sh; edits are overwritten on 'up'. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>${MAX_MEMORY_BYTES}</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>${PROFILE_XML}
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

# --- process helpers -----------------------------------------------------------

pid_alive() {
    local pid
    [[ -f "${PID_FILE}" ]] || return 1
    pid="$(cat "${PID_FILE}" 2>/dev/null || true)"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    # Guard against a recycled pid: it must still be a clickhouse process.
    grep -q clickhouse "/proc/${pid}/cmdline" 2>/dev/null
}

running_pid() { pid_alive && cat "${PID_FILE}"; }

# A clickhouse-server running with this checkout's config but no (valid) pid
# file, e.g. after the pid file was deleted: find it by its exact command line.
find_our_server() {
    local dir pid cmd
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        cmd="$(tr '\0' ' ' 2>/dev/null <"${dir}/cmdline" || true)"
        if [[ "${cmd}" == *clickhouse* && "${cmd}" == *"--config-file=${CONF_DIR}/config.xml"* ]]; then
            echo "${pid}"
            return 0
        fi
    done
    return 1
}

adopt_orphan() {
    local pid
    if ! pid_alive && pid="$(find_our_server)"; then
        mkdir -p "${BASE}"
        echo "${pid}" >"${PID_FILE}"
        log "found this checkout's server running as pid ${pid} without a pid file; adopted it"
    fi
}

# Serialize up/down/reset: two concurrent `up`s (say the test fixture and
# stack.sh) must not both start a server or delete each other's pid file.
take_lock() {
    mkdir -p "${REPO_ROOT}/.stack"
    exec 9>"${LOCK_FILE}"
    if command -v flock >/dev/null 2>&1; then
        flock -w 300 9 || die "another clickhouse.sh holds ${LOCK_FILE} for over 300 s"
    fi
}

healthy() {
    # HTTP first (cheap); fall back to the native client.
    local out=""
    if command -v curl >/dev/null 2>&1; then
        out="$(curl -fsS --max-time 2 "http://${HOST}:${HTTP_PORT}/?query=SELECT%201" 2>/dev/null || true)"
    fi
    if [[ "${out}" != "1" ]] && command -v clickhouse-client >/dev/null 2>&1; then
        out="$(timeout 5 clickhouse-client --host "${HOST}" --port "${TCP_PORT}" \
            --query 'SELECT 1' 2>/dev/null || true)"
    fi
    [[ "${out}" == "1" ]]
}

port_busy() {
    # true when something (not necessarily us) listens on the port
    (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null
}

# Start this server (the globals name it) unless it runs; its health is awaited apart
# (await_server), so that the cluster's four start together.
start_server() {
    ERR_OFFSET=0
    OUT_OFFSET=0
    adopt_orphan
    if pid_alive; then
        if healthy; then
            log "already running (pid $(running_pid)), healthy on ${HOST}:${TCP_PORT} (native) / ${HTTP_PORT} (http)"
            return 0
        fi
        log "running (pid $(running_pid)) but not answering yet; waiting"
        return 0
    fi
    rm -f "${PID_FILE}"
    for p in "${TCP_PORT}" "${HTTP_PORT}" ${INTERSERVER_PORT:+"${INTERSERVER_PORT}"}; do
        if port_busy "${p}"; then
            die "port ${p} on ${HOST} is already in use by another process (not started by this script: no live pid in ${PID_FILE})"
        fi
    done
    write_config
    local bin
    bin="$(server_bin)"
    # Running as root: tested with Debian's 18.16, it neither refuses root
    # nor checks who owns the data directory (it started both with a
    # root-owned and a clickhouse-owned one). Newer servers refuse to
    # start when the process user does not own the data directory. The
    # script creates .stack/clickhouse as the invoking user, so the two
    # match; only warn if someone changed the owner. Nothing is chowned to
    # the package's `clickhouse` account (the unused system service's).
    local owner
    owner="$(stat -c %u "${DATA_DIR}" 2>/dev/null || id -u)"
    if [[ "${owner}" != "$(id -u)" ]]; then
        log "warning: ${DATA_DIR} is owned by uid ${owner}, not by uid $(id -u) running the server; servers newer than 18.16 refuse that (chown -R it or run as that user)"
    fi
    log "starting $(server_version_string) with ${CONF_DIR}/config.xml"
    # setsid: detach from this shell's process group so Ctrl-C here or a
    # test runner's group kill does not take the server down mid-write.
    ERR_OFFSET="$(stat -c %s "${ERROR_LOG}" 2>/dev/null || echo 0)"
    OUT_OFFSET="$(stat -c %s "${STDOUT_LOG}" 2>/dev/null || echo 0)"
    # 9>&-: the server must not inherit (and so hold forever) the lock fd.
    setsid "${bin}" --config-file="${CONF_DIR}/config.xml" \
        >>"${STDOUT_LOG}" 2>&1 </dev/null 9>&- &
    # The pid file is ours, not the server's: 18.16 writes --pid-file only
    # when daemonized, and newer servers refuse to start when the file
    # already names a live process. Without job control the background
    # job is not a process-group leader, so setsid(1) execs in place and
    # $! is the server itself.
    echo "$!" >"${PID_FILE}"
}

# Wait until this server answers; ERR_OFFSET / OUT_OFFSET: where its logs stood at start.
await_server() {
    local err_offset="${1:-0}" out_offset="${2:-0}"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until healthy; do
        if ! pid_alive; then
            log "server exited during start-up; what it logged this time:"
            tail -c +"$((${err_offset:-0} + 1))" "${ERROR_LOG}" 2>/dev/null | tail -n 15 >&2 || true
            tail -c +"$((${out_offset:-0} + 1))" "${STDOUT_LOG}" 2>/dev/null | tail -n 15 >&2 || true
            die "clickhouse-server did not start; see ${ERROR_LOG} and ${STDOUT_LOG}"
        fi
        if ((SECONDS >= deadline)); then
            die "clickhouse-server (pid $(running_pid)) not healthy after ${START_TIMEOUT_S}s; see ${SERVER_LOG} and ${ERROR_LOG}. It is left running (a large data directory can take long to load): run 'up' again to keep waiting, or 'down' to stop it"
        fi
        sleep 0.2
    done
    log "healthy: pid $(running_pid), native ${HOST}:${TCP_PORT}, http ${HOST}:${HTTP_PORT}, data ${DATA_DIR}"
}

cmd_up() {
    installed || cmd_install
    take_lock
    start_server
    await_server "${ERR_OFFSET}" "${OUT_OFFSET}"
}

# Stop this server: SIGTERM (or $1 = KILL: SIGKILL at once, a crash), then SIGKILL after
# the timeout.
stop_server() {
    local signal="${1:-TERM}"
    adopt_orphan
    if ! pid_alive; then
        rm -f "${PID_FILE}"
        log "not running (${HOST}:${TCP_PORT})"
        return 0
    fi
    local pid
    pid="$(running_pid)"
    if [[ "${signal}" == KILL ]]; then
        log "SIGKILL pid ${pid} (${HOST}:${TCP_PORT})"
        kill -KILL "${pid}" 2>/dev/null || true
    else
        log "stopping pid ${pid} (SIGTERM, up to ${STOP_TIMEOUT_S}s)"
        kill -TERM "${pid}" 2>/dev/null || true
    fi
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while kill -0 "${pid}" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still alive after ${STOP_TIMEOUT_S}s; SIGKILL"
            kill -KILL "${pid}" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "${PID_FILE}"
    log "stopped (${HOST}:${TCP_PORT})"
}

cmd_down() {
    take_lock
    stop_server TERM
}

cmd_status() {
    if ! pid_alive && find_our_server >/dev/null; then
        echo "running (pid $(find_our_server)) but its pid file is missing; 'up' or 'down' adopts it"
        return 0
    fi
    if pid_alive; then
        if healthy; then
            echo "running (pid $(running_pid)), healthy: native ${HOST}:${TCP_PORT}, http ${HOST}:${HTTP_PORT}"
            return 0
        fi
        echo "running (pid $(running_pid)) but not answering on ${HOST}:${HTTP_PORT}; see ${SERVER_LOG}"
        return 1
    fi
    if installed; then
        echo "stopped ($(server_version_string))"
    else
        echo "stopped (not installed)"
    fi
    return 3
}

cmd_reset() {
    cmd_down
    if [[ -d "${BASE}" ]]; then
        log "removing ${BASE}"
        rm -rf -- "${BASE}"
    fi
    log "reset done; 'up' starts from an empty server"
}

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- the cluster: 2 shards x 2 replicas on loopback --------------------------------

CLUSTER_NAME="cdr_cluster"
CLUSTER_BASE="${REPO_ROOT}/.stack/clickhouse-cluster"
CLUSTER_NODES=(1 2 3 4)
ZK_PORT="${CDR_ZK_PORT:-12181}"
# A SIGKILLed replica's ZooKeeper session (and so its "active" mark, which quorum inserts
# count) expires after this long: short, so a crash is seen within seconds.
ZK_SESSION_TIMEOUT_MS="${CDR_CH_ZK_SESSION_TIMEOUT_MS:-10000}"

node_tcp_port() { echo $((19100 + $1 - 1)); }
node_http_port() { echo $((18200 + $1 - 1)); }
node_interserver_port() { echo $((19300 + $1 - 1)); }
node_shard() { echo $((($1 + 1) / 2)); }

# The <remote_servers> entry every node carries: shard s = nodes 2s-1 and 2s. Each shard
# writes to one replica and the replicated table copies it (internal_replication).
remote_servers_xml() {
    local s r
    printf '    <remote_servers>\n        <%s>\n' "${CLUSTER_NAME}"
    for s in 1 2; do
        printf '            <shard>\n                <internal_replication>true</internal_replication>\n'
        for r in $((2 * s - 1)) $((2 * s)); do
            printf '                <replica><host>%s</host><port>%s</port></replica>\n' \
                "${HOST}" "$(node_tcp_port "${r}")"
        done
        printf '            </shard>\n'
    done
    printf '        </%s>\n    </remote_servers>\n' "${CLUSTER_NAME}"
}

# Point the globals (paths, ports, config fragments) at cluster node $1.
select_node() {
    local n="$1"
    BASE="${CLUSTER_BASE}/node${n}"
    set_paths
    TCP_PORT="$(node_tcp_port "${n}")"
    HTTP_PORT="$(node_http_port "${n}")"
    INTERSERVER_PORT="$(node_interserver_port "${n}")"
    CLUSTER_XML="    <interserver_http_host>${HOST}</interserver_http_host>
    <interserver_http_port>${INTERSERVER_PORT}</interserver_http_port>
    <macros>
        <cluster>${CLUSTER_NAME}</cluster>
        <shard>$(node_shard "${n}")</shard>
        <replica>node${n}</replica>
    </macros>
$(remote_servers_xml)
    <zookeeper>
        <node><host>${HOST}</host><port>${ZK_PORT}</port></node>
        <session_timeout_ms>${ZK_SESSION_TIMEOUT_MS}</session_timeout_ms>
        <operation_timeout_ms>5000</operation_timeout_ms>
    </zookeeper>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>"
    # Inserts into a Distributed table are synchronous unless a client says otherwise:
    # the pipeline's writers pass it explicitly too (pipeline/storage/cluster.py).
    # prefer_localhost_replica 0: 18.16 run in-process, on the node's own shard, fails
    # `SELECT ... FROM <Distributed> FINAL ORDER BY ...` ("Cannot find column call_date in
    # source stream"); over the network, like every other shard, it does not.
    PROFILE_XML="
            <insert_distributed_sync>1</insert_distributed_sync>
            <prefer_localhost_replica>0</prefer_localhost_replica>"
}

cluster_take_lock() {
    LOCK_FILE="${REPO_ROOT}/.stack/clickhouse-cluster.lock"
    take_lock
}

check_node_arg() {
    [[ "${NODE_ARG}" =~ ^[1-4]$ ]] || { log "usage: clickhouse.sh ${CMD} 1|2|3|4 --cluster"; exit 2; }
}

cluster_up() {
    local n t0=${SECONDS}
    local -A err_at out_at
    installed || cmd_install
    "${SCRIPT_DIR}/zookeeper.sh" up
    cluster_take_lock
    for n in "$@"; do
        select_node "${n}"
        start_server
        err_at[${n}]="${ERR_OFFSET}"
        out_at[${n}]="${OUT_OFFSET}"
    done
    for n in "$@"; do
        select_node "${n}"
        await_server "${err_at[${n}]}" "${out_at[${n}]}"
    done
    log "cluster ${CLUSTER_NAME} nodes $* up in $((SECONDS - t0))s (native ports $(node_tcp_port 1)-$(node_tcp_port 4))"
}

cluster_stop() {
    local signal="$1" n
    shift
    cluster_take_lock
    for n in "$@"; do
        select_node "${n}"
        stop_server "${signal}"
    done
}

cluster_status() {
    local n rc=0 state
    for n in "${CLUSTER_NODES[@]}"; do
        select_node "${n}"
        if pid_alive && healthy; then
            state="running (pid $(running_pid)), healthy"
        elif pid_alive; then
            state="running (pid $(running_pid)), not answering"
            rc=1
        else
            state="stopped"
            ((rc == 0)) && rc=3
        fi
        printf 'cluster node %s (shard %s, replica node%s): %s  native %s:%s http %s\n' \
            "${n}" "$(node_shard "${n}")" "${n}" "${state}" "${HOST}" "${TCP_PORT}" "${HTTP_PORT}"
    done
    "${SCRIPT_DIR}/zookeeper.sh" status || rc=$?
    return "${rc}"
}

cluster_reset() {
    cluster_stop TERM "${CLUSTER_NODES[@]}"
    "${SCRIPT_DIR}/zookeeper.sh" reset
    if [[ -d "${CLUSTER_BASE}" ]]; then
        log "removing ${CLUSTER_BASE}"
        rm -rf -- "${CLUSTER_BASE}"
    fi
    log "cluster reset done; 'up --cluster' starts from empty servers"
}

run_cluster() {
    case "${CMD}" in
        up) cluster_up "${CLUSTER_NODES[@]}" ;;
        down)
            cluster_stop TERM "${CLUSTER_NODES[@]}"
            "${SCRIPT_DIR}/zookeeper.sh" down ;;
        status) cluster_status ;;
        reset) cluster_reset ;;
        stop-node) check_node_arg; cluster_stop TERM "${NODE_ARG}" ;;
        kill-node) check_node_arg; cluster_stop KILL "${NODE_ARG}" ;;
        start-node) check_node_arg; cluster_up "${NODE_ARG}" ;;
        *) usage ;;
    esac
}

CLUSTER=0
CMD=""
NODE_ARG=""
for arg in "$@"; do
    case "${arg}" in
        --cluster) CLUSTER=1 ;;
        -h|--help) usage ;;
        *) if [[ -z "${CMD}" ]]; then CMD="${arg}"; else NODE_ARG="${arg}"; fi ;;
    esac
done

if ((CLUSTER)); then
    run_cluster
    exit $?
fi
case "${CMD}" in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    stop-node|start-node|kill-node) log "${CMD} needs --cluster"; exit 2 ;;
    *) usage ;;
esac
