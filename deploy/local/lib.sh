# Shared by the local stack's scripts (kafka.sh, zookeeper.sh, clickhouse.sh, kamailio.sh):
# installing Debian packages, fetching jars from Maven Central, checking a pid file.
# Sourced, not run; the sourcing script defines log and die first.
# shellcheck shell=bash

# apt_install PKG...: install Debian packages (as root), running apt-get update and trying
# again when the package lists are stale; dies naming the packages. A package's own
# configuration files are kept, and a postinst that tries to start a system service may
# fail to: these scripts never use the system services, they run their own instances.
apt_install() {
    [[ "$(id -u)" -eq 0 ]] || die "$* missing; install them yourself or run as root (apt-get)"
    log "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    local opts=(-y -q --no-install-recommends
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    apt-get install "${opts[@]}" "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install "${opts[@]}" "$@" >/dev/null; } \
        || die "apt-get could not install $*"
}

# ensure_java_maven: the JDK (which runs the broker and ZooKeeper, Java 17+) and Maven
# (which fetches their jars), from Debian's packages when missing, so a fresh machine needs
# nothing installed by hand. $MVN is the Maven command.
ensure_java_maven() {
    local missing=()
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v "${MVN%% *}" >/dev/null || missing+=(maven)
    ((${#missing[@]})) || return 0
    apt_install "${missing[@]}"
}

# maven_fetch POM LIBS JAR_GLOB WHAT: the runtime class path of POM copied into LIBS by
# Maven, once per version of POM (a sha256 stamp in LIBS); JAR_GLOB (relative to LIBS)
# must match afterwards. The jars land in a temporary folder beside LIBS first, so an
# interrupted fetch never leaves a half-filled LIBS.
maven_fetch() {
    local pom="$1" libs="$2" glob="$3" what="$4" want have="" work tmp
    want="$(sha256sum "$pom" | cut -d' ' -f1)"
    [ -f "$libs/.pom.sha256" ] && have="$(cat "$libs/.pom.sha256")"
    # shellcheck disable=SC2086  # a glob, matched in LIBS
    if [ "$want" = "$have" ] && compgen -G "$libs/"$glob >/dev/null; then
        return 0
    fi
    ensure_java_maven
    command -v "${MVN%% *}" >/dev/null || die "maven ($MVN) not found; needed once to fetch the $what jars"
    work="$(dirname "$libs")"
    tmp="$work/libs.tmp.$$"
    log "fetching $what jars from Maven Central into ${libs#"$ROOT"/} ..."
    rm -rf "$tmp"
    mkdir -p "$work"
    # shellcheck disable=SC2086  # $MVN may carry options
    if ! $MVN -q -B -f "$pom" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" >"$work/fetch.log" 2>&1; then
        rm -rf "$tmp"
        die "jar fetch failed, see $work/fetch.log"
    fi
    # shellcheck disable=SC2086
    compgen -G "$tmp/"$glob >/dev/null || { rm -rf "$tmp"; die "no $what jar fetched, see $work/fetch.log"; }
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$libs"
    mv "$tmp" "$libs"
    log "jars ready ($(find "$libs" -name '*.jar' | wc -l) jars)"
}

# pidfile_alive FILE NAME: whether FILE holds the pid of a live process whose command line
# contains NAME (a recycled pid of another program does not count).
pidfile_alive() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}
