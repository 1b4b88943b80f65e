#!/usr/bin/env bash
# Local Kamailio "switch node" for development and integration tests.
#
#   deploy/local/kamailio.sh install       apt-get install kamailio + modules + sipp (idempotent)
#   deploy/local/kamailio.sh up            install if missing, render config, start, wait until up
#   deploy/local/kamailio.sh down          graceful stop (SIGTERM, wait, then SIGKILL)
#   deploy/local/kamailio.sh status        exit 0 only when it runs and answers on its ctl socket
#   deploy/local/kamailio.sh kill CALLID   admin kill of an answered call (HANGUP by SERVER, ADMIN)
#   deploy/local/kamailio.sh render        only write the config files (for a look)
#
# Kamailio (Debian's 5.6) runs project-local -- never through systemd --
# with deploy/kamailio/kamailio.cfg.in rendered to <base>/kamailio.cfg,
# pid file, ctl socket and log (<base>/kamailio.log: stderr, including the
# "CDR-EVENT <json>" journal lines) all under <base> = <repo>/.stack/kamailio.
# It listens on 127.0.0.1 only: SIP over UDP and the evapi TCP port.
#
# Environment overrides (all optional):
#   CDR_KAM_BASE (.stack/kamailio)      CDR_KAM_NODE (kam-1: "node" in every event)
#   CDR_KAM_SIP_PORT (15060)            CDR_KAM_EVAPI_PORT (18448)
#   CDR_KAM_MAX_CALL_S (7200)           CDR_KAM_NO_ANSWER_S (60: ringing limit, then 408)
#   CDR_KAM_FR_TIMER_MS (3000: a silent gateway is skipped after this)
#   CDR_KAM_DISPATCHER_FILE (deploy/kamailio/dispatcher.list)
#   CDR_KAM_ADDRESS_FILE (deploy/kamailio/addresses.list)
#   CDR_KAM_BLOCKLIST_FILE (deploy/kamailio/blocklist.txt)
#   CDR_KAM_CHILDREN (4)  CDR_KAM_SHM_MB (256)  CDR_KAM_LOG_LEVEL (2)
#   CDR_KAM_START_TIMEOUT_S (20)  CDR_KAM_STOP_TIMEOUT_S (15)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/../.." && pwd -P)"
KAM_DIR="${REPO_ROOT}/deploy/kamailio"
BASE="${CDR_KAM_BASE:-${REPO_ROOT}/.stack/kamailio}"
mkdir -p "${BASE}"
BASE="$(cd -- "${BASE}" && pwd -P)"
CFG="${BASE}/kamailio.cfg"
BLOCK_RE="${BASE}/blocklist.re"
PID_FILE="${BASE}/kamailio.pid"
CTL_SOCK="${BASE}/kamailio_ctl"
RUN_DIR="${BASE}/run"
LOG_FILE="${BASE}/kamailio.log"
LOCK_FILE="${BASE}/kamailio.lock"

SIP_PORT="${CDR_KAM_SIP_PORT:-15060}"
EVAPI_PORT="${CDR_KAM_EVAPI_PORT:-18448}"
MAX_CALL_S="${CDR_KAM_MAX_CALL_S:-7200}"
NO_ANSWER_S="${CDR_KAM_NO_ANSWER_S:-60}"
FR_TIMER_MS="${CDR_KAM_FR_TIMER_MS:-3000}"
NODE_ID="${CDR_KAM_NODE:-kam-1}"
DISPATCHER_FILE="${CDR_KAM_DISPATCHER_FILE:-${KAM_DIR}/dispatcher.list}"
ADDRESS_FILE="${CDR_KAM_ADDRESS_FILE:-${KAM_DIR}/addresses.list}"
BLOCKLIST_FILE="${CDR_KAM_BLOCKLIST_FILE:-${KAM_DIR}/blocklist.txt}"
CHILDREN="${CDR_KAM_CHILDREN:-4}"
SHM_MB="${CDR_KAM_SHM_MB:-256}"
LOG_LEVEL="${CDR_KAM_LOG_LEVEL:-2}"
START_TIMEOUT_S="${CDR_KAM_START_TIMEOUT_S:-20}"
STOP_TIMEOUT_S="${CDR_KAM_STOP_TIMEOUT_S:-15}"
HOST="127.0.0.1"
PACKAGES=(kamailio kamailio-extra-modules kamailio-json-modules sip-tester)

log() { printf '[kamailio.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for _v in SIP_PORT EVAPI_PORT MAX_CALL_S NO_ANSWER_S FR_TIMER_MS CHILDREN SHM_MB LOG_LEVEL; do
    if ! [[ "${!_v}" =~ ^[0-9]+$ ]]; then
        die "CDR_KAM_${_v} must be a whole number, got '${!_v}'"
    fi
done
for _p in "${SIP_PORT}" "${EVAPI_PORT}"; do
    ((_p >= 1 && _p <= 65535)) || die "invalid port ${_p}"
done
[[ "${NODE_ID}" =~ ^[A-Za-z0-9._-]+$ ]] || die "CDR_KAM_NODE must match [A-Za-z0-9._-]+"

kam_bin() { command -v kamailio 2>/dev/null || { [[ -x /usr/sbin/kamailio ]] && echo /usr/sbin/kamailio; } || true; }
kamcmd_bin() { command -v kamcmd 2>/dev/null || { [[ -x /usr/sbin/kamcmd ]] && echo /usr/sbin/kamcmd; } || true; }

installed() {
    local mods
    [[ -n "$(kam_bin)" && -n "$(kamcmd_bin)" ]] && command -v sipp >/dev/null 2>&1 || return 1
    # the json (jansson, evapi) and extra modules come in their own packages
    mods="$(dirname "$(dirname "$(kam_bin)")")/lib/x86_64-linux-gnu/kamailio/modules"
    [[ ! -d "${mods}" ]] || [[ -f "${mods}/jansson.so" && -f "${mods}/evapi.so" ]]
}

cmd_install() {
    if installed; then
        log "already installed: $("$(kam_bin)" -v 2>/dev/null | head -n1)"
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "install needs root (apt-get); install ${PACKAGES[*]} yourself"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get install -y ${PACKAGES[*]}"
    # Debian's postinst does not start the system service (it is disabled
    # until configured); either way this script never uses it.
    if ! apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${PACKAGES[@]}" >/dev/null; then
        log "install failed; apt-get update and retry"
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${PACKAGES[@]}" >/dev/null
    fi
    installed || die "apt-get finished but kamailio/kamcmd/sipp or the json modules are missing"
    log "installed: $("$(kam_bin)" -v 2>/dev/null | head -n1)"
}

# --- configuration -------------------------------------------------------------

abspath() { [[ -f "$1" ]] || die "list file not found: $1"; echo "$(cd -- "$(dirname -- "$1")" && pwd -P)/$(basename -- "$1")"; }

# block list -> regex module file: "1900*" = prefix, anything else = exact
render_blocklist() {
    local src="$1" line n=0
    {
        echo "# generated by deploy/local/kamailio.sh from ${src}"
        echo "[0]"
        # a pattern that never matches, so an empty list still compiles
        echo '^(?!)$'
        while IFS= read -r line || [[ -n "${line}" ]]; do
            line="${line%%#*}"
            line="${line//[[:space:]]/}"
            [[ -n "${line}" ]] || continue
            if [[ "${line}" == *'*' ]]; then
                line="${line%\*}"
                [[ "${line}" =~ ^\+?[0-9A-Za-z]*$ ]] || die "bad block list entry '${line}*' in ${src}"
                echo "^\\Q${line}\\E"
            else
                [[ "${line}" =~ ^\+?[0-9A-Za-z]+$ ]] || die "bad block list entry '${line}' in ${src}"
                echo "^\\Q${line}\\E\$"
            fi
            n=$((n + 1))
        done <"${src}"
    } >"${BLOCK_RE}.tmp"
    mv "${BLOCK_RE}.tmp" "${BLOCK_RE}"
    log "block list: ${n} entries from ${src}"
}

cmd_render() {
    local disp addr block
    disp="$(abspath "${DISPATCHER_FILE}")"
    addr="$(abspath "${ADDRESS_FILE}")"
    block="$(abspath "${BLOCKLIST_FILE}")"
    mkdir -p "${RUN_DIR}"
    render_blocklist "${block}"
    sed -e "s|@SIP_PORT@|${SIP_PORT}|g" \
        -e "s|@EVAPI_PORT@|${EVAPI_PORT}|g" \
        -e "s|@MAX_CALL_S@|${MAX_CALL_S}|g" \
        -e "s|@NO_ANSWER_MS@|$((NO_ANSWER_S * 1000))|g" \
        -e "s|@FR_TIMER_MS@|${FR_TIMER_MS}|g" \
        -e "s|@RING_EXPIRE_S@|$((NO_ANSWER_S + 120))|g" \
        -e "s|@CALL_EXPIRE_S@|$((MAX_CALL_S + 600))|g" \
        -e "s|@NODE_ID@|${NODE_ID}|g" \
        -e "s|@CHILDREN@|${CHILDREN}|g" \
        -e "s|@LOG_LEVEL@|${LOG_LEVEL}|g" \
        -e "s|@CTL_SOCK@|${CTL_SOCK}|g" \
        -e "s|@DISPATCHER_FILE@|${disp}|g" \
        -e "s|@ADDRESS_FILE@|${addr}|g" \
        -e "s|@BLOCKLIST_RE@|${BLOCK_RE}|g" \
        "${KAM_DIR}/kamailio.cfg.in" >"${CFG}.tmp"
    if grep -n '@[A-Z_]*@' "${CFG}.tmp" >&2; then
        die "unrendered placeholders left in ${CFG}.tmp"
    fi
    mv "${CFG}.tmp" "${CFG}"
}

# --- process helpers -------------------------------------------------------------

pid_alive() {
    local pid
    [[ -f "${PID_FILE}" ]] || return 1
    pid="$(cat "${PID_FILE}" 2>/dev/null || true)"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    grep -q kamailio "/proc/${pid}/cmdline" 2>/dev/null
}

running_pid() { pid_alive && cat "${PID_FILE}"; }

kamcmd_q() { timeout 5 "$(kamcmd_bin)" -s "unix:${CTL_SOCK}" "$@"; }

healthy() {
    [[ -S "${CTL_SOCK}" ]] || return 1
    kamcmd_q core.uptime >/dev/null 2>&1 || return 1
    (exec 3<>"/dev/tcp/${HOST}/${EVAPI_PORT}") 2>/dev/null
}

take_lock() {
    exec 9>"${LOCK_FILE}"
    if command -v flock >/dev/null 2>&1; then
        flock -w 60 9 || die "another kamailio.sh holds ${LOCK_FILE}"
    fi
}

cmd_up() {
    installed || cmd_install
    take_lock
    if pid_alive; then
        if healthy; then
            log "already running (pid $(running_pid)), SIP udp:${HOST}:${SIP_PORT}, evapi ${HOST}:${EVAPI_PORT}"
            return 0
        fi
        log "running (pid $(running_pid)) but not answering yet; waiting"
    else
        rm -f "${PID_FILE}" "${CTL_SOCK}"
        if (exec 3<>"/dev/tcp/${HOST}/${EVAPI_PORT}") 2>/dev/null; then
            die "evapi port ${EVAPI_PORT} on ${HOST} is already in use"
        fi
        cmd_render
        "$(kam_bin)" -c -f "${CFG}" -Y "${RUN_DIR}" >"${BASE}/check.log" 2>&1 \
            || { tail -n 20 "${BASE}/check.log" >&2; die "config check failed; see ${BASE}/check.log"; }
        local log_offset
        log_offset="$(stat -c %s "${LOG_FILE}" 2>/dev/null || echo 0)"
        log "starting $("$(kam_bin)" -v | head -n1 | sed 's/^version: //') with ${CFG}"
        # -DD: no daemon fork, so stderr (-E) stays the log file and $! is
        # the main process; setsid keeps it out of the caller's process group.
        setsid "$(kam_bin)" -f "${CFG}" -P "${PID_FILE}" -Y "${RUN_DIR}" -E -DD \
            -m "${SHM_MB}" -M 16 >>"${LOG_FILE}" 2>&1 </dev/null 9>&- &
        # kamailio writes -P itself (and refuses to start if it names a live
        # process), so until then the start-up is watched through $!
        local kpid=$!
        local deadline=$((SECONDS + START_TIMEOUT_S))
        until healthy; do
            if ! kill -0 "${kpid}" 2>/dev/null; then
                tail -c +"$((log_offset + 1))" "${LOG_FILE}" | tail -n 20 >&2 || true
                die "kamailio exited during start-up; see ${LOG_FILE}"
            fi
            ((SECONDS < deadline)) || die "kamailio (pid ${kpid}) not answering after ${START_TIMEOUT_S}s; see ${LOG_FILE}"
            sleep 0.1
        done
    fi
    log "up: pid $(running_pid), SIP udp:${HOST}:${SIP_PORT}, evapi ${HOST}:${EVAPI_PORT}, node ${NODE_ID}, log ${LOG_FILE}"
}

cmd_down() {
    take_lock
    if ! pid_alive; then
        rm -f "${PID_FILE}"
        log "not running"
        return 0
    fi
    local pid
    pid="$(running_pid)"
    log "stopping pid ${pid} (SIGTERM, up to ${STOP_TIMEOUT_S}s)"
    kill -TERM "${pid}" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while kill -0 "${pid}" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still alive after ${STOP_TIMEOUT_S}s; SIGKILL"
            kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "${pid}" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "${PID_FILE}" "${CTL_SOCK}"
    log "stopped"
}

cmd_status() {
    if pid_alive; then
        if healthy; then
            echo "running (pid $(running_pid)): SIP udp:${HOST}:${SIP_PORT}, evapi ${HOST}:${EVAPI_PORT}, active dialogs: $(kamcmd_q dlg.stats_active 2>/dev/null | tr -s ' \n' ' ')"
            return 0
        fi
        echo "running (pid $(running_pid)) but not answering on ${CTL_SOCK}; see ${LOG_FILE}"
        return 1
    fi
    echo "stopped"
    return 3
}

# Admin kill: mark the call (dialog:end reads the mark and reports SERVER /
# ADMIN), then end the dialog, which sends BYE to both parties.
cmd_kill() {
    local callid="${1:-}" out h_entry h_id
    [[ -n "${callid}" ]] || die "usage: kamailio.sh kill CALLID"
    pid_alive || die "kamailio is not running"
    out="$(kamcmd_q dlg.dlg_list "${callid}" 2>&1)" || die "dlg.dlg_list failed: ${out}"
    # A dialog answered but not yet ACKed (state 3) ends without dialog:end,
    # i.e. without a HANGUP event: give the ACK up to 2 s to arrive.
    local deadline=$((SECONDS + 2))
    while [[ "$(awk '$1 == "state:" {print $2; exit}' <<<"${out}")" == "3" ]] && ((SECONDS < deadline)); do
        sleep 0.05
        out="$(kamcmd_q dlg.dlg_list "${callid}" 2>&1)" || die "dlg.dlg_list failed: ${out}"
    done
    h_entry="$(awk '$1 == "h_entry:" {print $2; exit}' <<<"${out}")"
    h_id="$(awk '$1 == "h_id:" {print $2; exit}' <<<"${out}")"
    [[ -n "${h_entry}" && -n "${h_id}" ]] || die "no active dialog with Call-ID ${callid}"
    kamcmd_q htable.sets admin "${callid}" 1 >/dev/null
    if ! out="$(kamcmd_q dlg.end_dlg "${h_entry}" "${h_id}" 2>&1)"; then
        kamcmd_q htable.delete admin "${callid}" >/dev/null 2>&1 || true
        die "dlg.end_dlg failed: ${out}"
    fi
    log "killed call ${callid} (dialog ${h_entry}:${h_id})"
}

usage() {
    sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

case "${1:-}" in
    install) cmd_install ;;
    render) cmd_render ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kill) shift; cmd_kill "$@" ;;
    *) usage ;;
esac
