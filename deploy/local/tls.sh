#!/usr/bin/env bash
# A small certificate authority for the secured stack (docs/security.md), with openssl.
#
#   deploy/local/tls.sh ensure DIR [CLIENT...]   CA, server and client certificates, each
#                                                made only when missing (idempotent)
#   deploy/local/tls.sh rotate-server DIR        a new server key and certificate, same CA
#   deploy/local/tls.sh rotate-client DIR NAME   a new key and certificate for client NAME
#   deploy/local/tls.sh show DIR                 subjects, names and expiry dates
#
# DIR/ca.pem, ca.key          the CA (clients trust ca.pem; ca.key signs, keep it private)
# DIR/server.pem, server.key  the servers' certificate: CN=broker (Kafka maps CN to the
#                             principal User:broker), names 127.0.0.1 and localhost plus
#                             $TLS_SERVER_NAMES (e.g. "DNS:kafka,DNS:clickhouse" for compose)
# DIR/broker.keystore.pem     server key + certificate in one PEM file (Kafka's keystore)
# DIR/clients/NAME.pem, .key  client certificates for mTLS, CN=NAME (the Kafka principal)
#
# Keys are EC P-256 (PKCS#8, unencrypted, mode 0600); certificates are valid
# $TLS_DAYS days (default 825), the CA 3650 days.
set -euo pipefail

DAYS="${TLS_DAYS:-825}"
EXTRA_NAMES="${TLS_SERVER_NAMES:-}"

log() { printf 'tls.sh: %s\n' "$*" >&2; }
die() { printf 'tls.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"

new_key() {  # path: an EC key readable by its owner only
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp" 2>/dev/null)
    mv "$1.tmp" "$1"
}

ensure_ca() {
    local dir="$1"
    [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ] && return 0
    log "creating the CA in $dir"
    new_key "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 -subj "/CN=cdr-pipeline local CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/ca.pem.tmp" 2>/dev/null
    mv "$dir/ca.pem.tmp" "$dir/ca.pem"
}

# sign CA_DIR OUT_DIR NAME CN EXT: OUT_DIR/NAME.key (made if missing) and NAME.pem signed
# by the CA in CA_DIR
sign() {
    local ca="$1" out="$2" name="$3" cn="$4" ext="$5" tmp
    [ -s "$out/$name.key" ] || new_key "$out/$name.key"
    tmp="$(mktemp -d)"
    printf '%s\n' "$ext" >"$tmp/ext.cnf"
    openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$tmp/req.csr" 2>/dev/null
    openssl x509 -req -in "$tmp/req.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" \
        -CAcreateserial -CAserial "$tmp/ca.srl" -days "$DAYS" -sha256 -extfile "$tmp/ext.cnf" \
        -out "$out/$name.pem.tmp" 2>/dev/null || { rm -rf "$tmp"; die "signing $name failed"; }
    rm -rf "$tmp"
    mv "$out/$name.pem.tmp" "$out/$name.pem"
}

server_cert() {
    # CN=broker: the broker also connects to its own controller listener (mTLS) and is
    # known there by this certificate, so it is a client certificate too.
    local dir="$1" names="IP:127.0.0.1,DNS:localhost"
    [ -n "$EXTRA_NAMES" ] && names="$names,$EXTRA_NAMES"
    sign "$dir" "$dir" server broker \
        "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$names"
    (umask 077 && cat "$dir/server.key" "$dir/server.pem" >"$dir/broker.keystore.pem.tmp")
    mv "$dir/broker.keystore.pem.tmp" "$dir/broker.keystore.pem"
}

client_cert() {
    local dir="$1" name="$2"
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "client name $name: letters, digits, . _ - only"
    mkdir -p "$dir/clients"
    sign "$dir" "$dir/clients" "$name" "$name" \
        "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
}

cmd_ensure() {
    local dir="$1" name
    shift
    mkdir -p "$dir"
    chmod 700 "$dir"
    ensure_ca "$dir"
    if [ ! -s "$dir/server.pem" ] || [ ! -s "$dir/broker.keystore.pem" ] \
        || ! openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
        log "server certificate for 127.0.0.1, localhost${EXTRA_NAMES:+, $EXTRA_NAMES}"
        rm -f "$dir/server.key"
        server_cert "$dir"
    fi
    for name in "$@"; do
        [ -s "$dir/clients/$name.pem" ] && continue
        client_cert "$dir" "$name"
    done
}

cmd_show() {
    local f
    for f in "$1"/ca.pem "$1"/server.pem "$1"/clients/*.pem; do
        [ -f "$f" ] || continue
        printf '%s: ' "${f#"$1"/}"
        openssl x509 -noout -subject -enddate -ext subjectAltName -in "$f" 2>/dev/null | tr '\n' ' '
        echo
    done
}

[ $# -ge 2 ] || usage
cmd="$1"
dir="$2"
shift 2
case "$cmd" in
    ensure) cmd_ensure "$dir" "$@" ;;
    rotate-server)
        [ -s "$dir/ca.pem" ] || die "no CA in $dir: run ensure first"
        rm -f "$dir/server.key"
        server_cert "$dir"
        log "new server key and certificate in $dir (restart or reload the servers)" ;;
    rotate-client)
        [ $# -eq 1 ] || usage
        rm -f "$dir/clients/$1.key"
        client_cert "$dir" "$1"
        log "new key and certificate for client $1 in $dir/clients" ;;
    show) cmd_show "$dir" ;;
    *) usage ;;
esac
