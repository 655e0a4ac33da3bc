#!/usr/bin/env bash
# A private PostgreSQL cluster for development and tests, in the checkout.
#
# usage: scripts/pgcluster.sh COMMAND
#   start     initdb if needed, start (idempotent), wait until ready, create the database
#   stop      fast shutdown (idempotent)
#   status    print the state; exit 0 if running, 3 if not
#   url       print the connection URL (works whether or not the cluster runs)
#   psql      open psql on the database (extra arguments are passed to psql)
#   refresh   restart the cluster if its server binary is not the one running (a package
#             upgrade under it, e.g. apt-get install of any postgresql-15-* package moving the
#             server from 15.18 to 15.20: the running postmaster then loads the new minor's
#             libraries, plpgsql.so with an undefined symbol); nothing otherwise. start does
#             the same check when the cluster already runs; scripts/install-system.sh runs it.
#   destroy   stop and delete the cluster's folder
#   start-second, stop-second, status-second, url-second, psql-second, refresh-second,
#   destroy-second:
#             the same for a second cluster (logical replication tests), by default in
#             .pgdata/second on port 54330 (PGINGEST_PGDATA2, PGINGEST_PGPORT2).
#
# layout (PGINGEST_PGDATA, default <checkout>/.pgdata):
#   data/         the data directory       run/   the socket directory
#   server.log    the server's log         data/pgingest.conf  settings, rewritten at each start
#
# environment:
#   PGINGEST_PGDATA       cluster folder (default <checkout>/.pgdata)
#   PGINGEST_PGPORT       TCP port on 127.0.0.1 (default 54329)
#   PGINGEST_PGDATABASE   database created by start (default pgingest)
#   PG_MAJOR              PostgreSQL major for a new cluster (default: as scripts/install-system.sh)
#
# Dev/test settings: trust authentication for local and 127.0.0.1, fsync off, listens on
# 127.0.0.1 and the socket only. Do not use it for data you want to keep.
#
# As root the server programs run as the `postgres` system user (runuser) and the folder is
# chowned to it; otherwise they run as the caller. If the postgres user cannot reach the
# checkout (a parent directory without search permission), or the socket path would be too
# long, the folder lives in /tmp/pgingest-<hash of its path> and .pgdata is a symlink to it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

cmd=${1:-status}
[[ $# -gt 0 ]] && shift
if [[ $cmd == *-second ]]; then
    cmd=${cmd%-second}
    PGDIR=${PGINGEST_PGDATA2:-$ROOT/.pgdata/second}
    PORT=${PGINGEST_PGPORT2:-54330}
    NAME="second cluster"
else
    PGDIR=${PGINGEST_PGDATA:-$ROOT/.pgdata}
    PORT=${PGINGEST_PGPORT:-54329}
    NAME="cluster"
fi
DBNAME=${PGINGEST_PGDATABASE:-pgingest}
[[ $PGDIR == /* ]] || PGDIR=$PWD/$PGDIR
[[ $PORT =~ ^[0-9]+$ ]] || {
    echo "pgcluster: port must be a number, got '$PORT'" >&2
    exit 2
}
URL="postgresql://postgres@127.0.0.1:$PORT/$DBNAME"

say() { printf 'pgcluster: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

if [[ $(id -u) -eq 0 ]]; then IS_ROOT=1; else IS_ROOT=0; fi
as_pg() { # run a server program as postgres (when root) or as the caller
    if ((IS_ROOT)); then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}
pg_can() { # pg_can TEST-ARGS...: `test` as the user that runs the server
    if ((IS_ROOT)); then
        (cd / && runuser -u postgres -- test "$@") 2>/dev/null
    else
        test "$@"
    fi
}

# --- the cluster's folder -----------------------------------------------------------------
REAL="" # the physical folder (PGDIR or the target of its symlink)
locate() { # sets REAL without creating anything; empty if the folder does not exist
    REAL=""
    if [[ -d $PGDIR ]]; then REAL=$(cd -P "$PGDIR" && pwd); fi
}

needs_tmp_home() { # 0 if the cluster must live under /tmp
    local sock="$PGDIR/run/.s.PGSQL.$PORT"
    ((${#sock} > 100)) && return 0
    if ((IS_ROOT)); then
        id postgres >/dev/null 2>&1 || die "no postgres system user: run scripts/install-system.sh"
        pg_can -x "$(dirname "$PGDIR")" || return 0
    fi
    return 1
}

ensure_folder() { # create the folder (or its /tmp home and the symlink), set REAL, fix owner
    if [[ -L $PGDIR && ! -e $PGDIR ]]; then # dangling symlink: its /tmp home was removed
        mkdir -p "$(readlink "$PGDIR")"
    fi
    if [[ ! -e $PGDIR ]]; then
        mkdir -p "$(dirname "$PGDIR")"
        if needs_tmp_home; then
            local home
            home=/tmp/pgingest-$(printf '%s' "$PGDIR" | sha256sum | cut -c1-12)
            mkdir -p "$home"
            ln -s "$home" "$PGDIR"
            say "the postgres user cannot reach $PGDIR (or the socket path is too long):" \
                "using $home, linked from $PGDIR"
        else
            mkdir -p "$PGDIR"
        fi
    fi
    locate
    if ((IS_ROOT)); then
        [[ $(stat -c %U "$REAL") == postgres ]] || chown -R postgres:postgres "$REAL"
        pg_can -w "$REAL" || die "the postgres user cannot write $REAL"
    fi
}

# --- binaries -----------------------------------------------------------------------------
BIN=""
pick_bin() {
    local major=""
    if [[ -n $REAL && -f $REAL/data/PG_VERSION ]]; then
        major=$(cat "$REAL/data/PG_VERSION")
        if [[ -n ${PG_MAJOR:-} && $PG_MAJOR != "$major" ]]; then
            say "note: PG_MAJOR=$PG_MAJOR but the existing cluster is PostgreSQL $major: using $major"
        fi
    else
        major=$("$ROOT/scripts/install-system.sh" --print-pg-major)
    fi
    BIN=/usr/lib/postgresql/$major/bin
    [[ -x $BIN/postgres || ${1:-} == soft ]] || die "PostgreSQL $major is not installed ($BIN): run make system"
}

is_running() { [[ -n $REAL && -f $REAL/data/PG_VERSION ]] && as_pg "$BIN/pg_ctl" -D "$REAL/data" status >/dev/null 2>&1; }

running_port() { sed -n 4p "$REAL/data/postmaster.pid" 2>/dev/null || true; }

# --- a server binary upgraded under the running postmaster --------------------------------
pg_version_number() { # pg_version_number TEXT: 15.18 of "postgres (PostgreSQL) 15.18 (Debian ...)"
    if [[ $1 =~ ([0-9]+(\.[0-9]+)*(devel|alpha[0-9]*|beta[0-9]*|rc[0-9]*)?) ]]; then
        echo "${BASH_REMATCH[1]}"
    fi
}

# restart_reason BINARY_VERSION SERVER_VERSION BINARY_CTIME POSTMASTER_START: prints why the
# running postmaster must be restarted and returns 0, or returns 1. The versions are the texts of
# `postgres --version` and `SHOW server_version` (either may be empty: unknown); the times are
# epoch seconds: the binary's inode change time (dpkg keeps the package's mtime, but the ctime
# is the install's) and the postmaster's start (line 3 of postmaster.pid). The versions decide
# when both are known; otherwise a binary changed after the start counts.
restart_reason() {
    local bin server
    bin=$(pg_version_number "$1")
    server=$(pg_version_number "$2")
    if [[ -n $bin && -n $server ]]; then
        [[ $bin != "$server" ]] || return 1
        local how=newer
        [[ $(printf '%s\n%s\n' "$bin" "$server" | sort -V | tail -n1) == "$bin" ]] || how=older
        echo "the server binary is PostgreSQL $bin, $how than the running postmaster ($server)"
        return 0
    fi
    if [[ $3 =~ ^[0-9]+$ && $4 =~ ^[0-9]+$ ]] && (($3 > $4)); then
        echo "the server binary changed after the postmaster started (a package upgrade?)"
        return 0
    fi
    return 1
}

check_binary() { # restart the running cluster if its binary was replaced (see restart_reason)
    local reason server
    server=$("$BIN/psql" -X -qAt -h 127.0.0.1 -p "$(running_port)" -U postgres -d postgres \
        -c 'SHOW server_version' 2>/dev/null || true)
    reason=$(restart_reason "$("$BIN/postgres" --version 2>/dev/null || true)" "$server" \
        "$(stat -c %Z "$BIN/postgres" 2>/dev/null || true)" \
        "$(sed -n 3p "$REAL/data/postmaster.pid" 2>/dev/null || true)") || return 0
    say "$reason: restarting the $NAME"
    write_conf
    if ! as_pg "$BIN/pg_ctl" -D "$REAL/data" -l "$REAL/server.log" -m fast -w -t 60 -s restart; then
        tail -n 30 "$REAL/server.log" >&2 || true
        die "the server did not restart"
    fi
    say "$NAME restarted: PostgreSQL $(pg_version_number "$("$BIN/postgres" --version)")"
}

# --- settings -----------------------------------------------------------------------------
write_conf() {
    local conf=$REAL/data/pgingest.conf
    cat >"$conf" <<EOF
# Written by scripts/pgcluster.sh at every start: change the script, or use ALTER SYSTEM
# (postgresql.auto.conf is read after this file and wins).
# Development and test cluster: trust authentication, no durability.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$REAL/run'
max_connections = 200
shared_buffers = '256MB'
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
shared_preload_libraries = ''
EOF
    ((IS_ROOT)) && chown postgres:postgres "$conf"
    return 0
}

init_cluster() {
    local locale=C
    if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then locale=C.UTF-8; fi
    say "initdb $REAL/data (PostgreSQL $(basename "$(dirname "$BIN")"), UTF8, locale $locale)"
    as_pg "$BIN/initdb" -D "$REAL/data" -U postgres --auth=trust -E UTF8 --locale="$locale" \
        >"$REAL/initdb.log" 2>&1 || {
        cat "$REAL/initdb.log" >&2
        die "initdb failed"
    }
    echo "include_if_exists = 'pgingest.conf'" >>"$REAL/data/postgresql.conf"
}

check_checkout_access() { # the server's user must read the checkout (PL/Python imports from .venv)
    ((IS_ROOT)) || return 0
    if ! pg_can -r "$ROOT/pyproject.toml"; then
        say "warning: the postgres user cannot read $ROOT: PL/Python cannot import from its .venv"
    fi
}

# --- commands -----------------------------------------------------------------------------
cmd_start() {
    ensure_folder
    pick_bin
    if is_running; then
        local p
        p=$(running_port)
        say "$NAME already running (port ${p:-?}, $REAL/data)"
        [[ $p == "$PORT" ]] || say "warning: it listens on port $p, not $PORT: stop it first to change the port"
        check_binary
    else
        [[ -f $REAL/data/PG_VERSION ]] || init_cluster
        write_conf
        as_pg mkdir -p "$REAL/run"
        say "starting $NAME on 127.0.0.1:$PORT (log: $REAL/server.log)"
        if ! as_pg "$BIN/pg_ctl" -D "$REAL/data" -l "$REAL/server.log" -w -t 60 -s start; then
            tail -n 30 "$REAL/server.log" >&2 || true
            die "the server did not start"
        fi
    fi
    local i
    for i in $(seq 1 60); do
        "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d postgres && break
        ((i < 60)) || die "not ready after 60 s (see $REAL/server.log)"
        sleep 1
    done
    local exists
    exists=$("$BIN/psql" -X -qAt -v ON_ERROR_STOP=1 -v db="$DBNAME" \
        -h 127.0.0.1 -p "$PORT" -U postgres -d postgres <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")
    if [[ $exists != 1 ]]; then
        "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DBNAME"
        say "created database $DBNAME"
    fi
    check_checkout_access
    say "ready: $URL"
}

cmd_stop() {
    locate
    if [[ -z $REAL || ! -f $REAL/data/PG_VERSION ]]; then
        say "$NAME not initialised ($PGDIR): nothing to stop"
        return 0
    fi
    pick_bin soft
    if [[ -x $BIN/pg_ctl ]] && is_running; then
        as_pg "$BIN/pg_ctl" -D "$REAL/data" -m fast -w -t 60 -s stop
        say "$NAME stopped"
    else
        say "$NAME not running"
    fi
}

cmd_status() {
    locate
    if [[ -z $REAL || ! -f $REAL/data/PG_VERSION ]]; then
        say "$NAME not initialised ($PGDIR)"
        exit 3
    fi
    pick_bin
    if is_running; then
        echo "$NAME running: PostgreSQL $(cat "$REAL/data/PG_VERSION"), port $(running_port), data $REAL/data"
        echo "url: $URL"
        check_checkout_access
    else
        echo "$NAME stopped: data $REAL/data"
        exit 3
    fi
}

cmd_refresh() {
    locate
    [[ -n $REAL && -f $REAL/data/PG_VERSION ]] || return 0
    pick_bin soft
    if [[ -x $BIN/pg_ctl ]] && is_running; then check_binary; fi
}

cmd_destroy() {
    cmd_stop
    locate
    if [[ -L $PGDIR ]]; then
        [[ -n $REAL ]] && rm -rf -- "$REAL"
        rm -f -- "$PGDIR"
    else
        rm -rf -- "$PGDIR"
    fi
    say "$NAME removed ($PGDIR)"
}

# Sourced (tests/test_system_scripts.py): the functions only.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then return 0; fi

case $cmd in
    start) cmd_start ;;
    refresh) cmd_refresh ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url) echo "$URL" ;;
    psql)
        locate
        pick_bin
        exec "$BIN/psql" "$URL" "$@"
        ;;
    destroy) cmd_destroy ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
    *)
        say "unknown command: $cmd (try --help)"
        exit 2
        ;;
esac
